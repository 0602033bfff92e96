"""Dockerfile parsing and variable expansion, as dockerd's classic builder reads them.

``parse`` turns the text into logical instructions: parser directives (``# escape=``) at the
top, comments dropped (also inside a continued line), lines joined at the escape character,
instruction names case-insensitive, each instruction's arguments split into flags
(``--chown=…``) and either an exec (JSON) form or a shell form. ``Lexer`` expands
``$VAR``/``${VAR}``/``${VAR:-x}``/``${VAR:+x}`` with docker's quoting rules; the builder
applies it, with the ARG and ENV values of the moment, to the instructions dockerd expands.
Errors name the line, in dockerd's words where it has some.
"""

from __future__ import annotations

import json
import re

import attrs

from engine.errors import InvalidArgument

DEFAULT_ESCAPE = "\\"
# what the classic builder knows; ONBUILD triggers are recorded, not run here
INSTRUCTIONS = frozenset({
    "from", "run", "cmd", "entrypoint", "env", "arg", "label", "workdir", "user", "expose",
    "volume", "stopsignal", "healthcheck", "shell", "copy", "add", "onbuild", "maintainer",
})
# instructions whose arguments the builder expands ($VAR) before using them
EXPANDED = frozenset({"add", "copy", "env", "expose", "from", "label", "stopsignal", "user",
                      "volume", "workdir", "arg"})
# the flags each instruction takes (the classic builder's; BuildKit's others are refused)
FLAGS: dict[str, frozenset[str]] = {
    "from": frozenset({"platform"}),
    "copy": frozenset({"chown", "from", "chmod"}),
    "add": frozenset({"chown", "chmod"}),
    "healthcheck": frozenset({"interval", "timeout", "start-period", "start-interval", "retries"}),
}
BUILDKIT_ONLY_FLAGS = {"run": ("mount", "network", "security"), "copy": ("link", "parents", "exclude"),
                       "add": ("link", "checksum", "keep-git-dir")}
STAGE_NAME = re.compile(r"^[a-z][a-z0-9\-_.]*$")
_DIRECTIVE = re.compile(r"^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$")
_NAME_START = re.compile(r"[A-Za-z_]")
_NAME_CHAR = re.compile(r"[A-Za-z0-9_]")


class DockerfileError(InvalidArgument):
    """The Dockerfile cannot be read: the message names the line."""


def parse_error(line: int, message: str) -> DockerfileError:
    return DockerfileError(f"dockerfile parse error line {line}: {message}")


@attrs.frozen
class Instruction:
    """One logical instruction. ``line`` is where it starts (1-based); ``original`` is the
    joined text as written (what the step line shows); ``flags`` the leading ``--x=y``;
    ``json`` whether ``args`` came from a JSON array (exec form), else ``args`` holds the
    shell form as one string (``rest``) or its words, depending on the instruction."""

    cmd: str
    original: str
    line: int
    rest: str
    flags: dict[str, str] = attrs.field(factory=dict)
    json: bool = False
    args: list[str] = attrs.field(factory=list)


@attrs.frozen
class Dockerfile:
    instructions: list[Instruction]
    escape: str = DEFAULT_ESCAPE

    def stages(self) -> list[list[Instruction]]:
        """The instructions of each stage, each starting with its FROM."""
        stages: list[list[Instruction]] = []
        for instr in self.instructions:
            if instr.cmd == "from":
                stages.append([instr])
            elif stages:
                stages[-1].append(instr)
        return stages

    def meta_args(self) -> list[Instruction]:
        """The ARGs before the first FROM (they may parameterise the FROMs)."""
        out = []
        for instr in self.instructions:
            if instr.cmd == "from":
                break
            out.append(instr)
        return out


# --- physical lines to logical instructions --------------------------------------------------


def _directives(lines: list[str]) -> tuple[dict[str, str], int]:
    """Parser directives at the very top (``# escape=`` and ``# syntax=``); the first other
    line ends them. Returns them and the index of the first line after."""
    found: dict[str, str] = {}
    for index, line in enumerate(lines):
        match = _DIRECTIVE.match(line.strip())
        if not match:
            return found, index
        key = match.group(1).lower()
        if key in found:
            raise parse_error(index + 1, f"only one {key} parser directive can be used")
        found[key] = match.group(2)
    return found, len(lines)


def _ends_with_escape(line: str, escape: str) -> bool:
    return line.rstrip().endswith(escape)


def parse(text: str) -> Dockerfile:
    """Parse a Dockerfile's text. Raises DockerfileError naming the line."""
    text = text.removeprefix("\ufeff")
    lines = text.replace("\r\n", "\n").split("\n")
    directives, first = _directives(lines)
    escape = directives.get("escape", DEFAULT_ESCAPE)
    if escape not in ("\\", "`"):
        raise parse_error(1, f"invalid escape token '{escape}' does not match ` or \\")
    instructions: list[Instruction] = []
    index = first
    while index < len(lines):
        line = lines[index]
        start = index + 1
        index += 1
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        logical = line.lstrip()
        while _ends_with_escape(logical, escape):
            logical = logical.rstrip()[:-1]
            # the next line that is neither a comment nor empty continues this one
            while index < len(lines) and (not lines[index].strip() or lines[index].strip().startswith("#")):
                index += 1
            if index >= len(lines):
                break
            logical += lines[index]
            index += 1
        instructions.append(_instruction(logical.strip(), start, escape))
    return Dockerfile(instructions, escape)


def _instruction(logical: str, line: int, escape: str) -> Instruction:
    word, _, rest = logical.partition(" ") if " " in logical.split("\t", 1)[0] else logical.partition("\t")
    cmd = word.lower()
    rest = rest.strip()
    if cmd not in INSTRUCTIONS:
        raise parse_error(line, f"unknown instruction: {word.upper()}")
    flags, rest = _flags(cmd, rest, line)
    instr = Instruction(cmd=cmd, original=logical, line=line, rest=rest, flags=flags)
    return _shape(instr, escape)


def _flags(cmd: str, rest: str, line: int) -> tuple[dict[str, str], str]:
    """Leading ``--name=value`` (or ``--name`` alone) words of an instruction."""
    flags: dict[str, str] = {}
    if cmd == "onbuild":
        return flags, rest
    while rest.startswith("--"):
        word, _, after = rest.partition(" ")
        if word == "--":
            break
        name, eq, value = word[2:].partition("=")
        allowed = FLAGS.get(cmd, frozenset())
        if name in BUILDKIT_ONLY_FLAGS.get(cmd, ()):
            raise InvalidArgument(f"the --{name} option requires BuildKit. Refer to "
                                  "https://docs.docker.com/go/buildkit/ to learn how to build images with "
                                  "BuildKit enabled")
        if name not in allowed:
            raise parse_error(line, f"unknown flag: {name}")
        if not eq:
            raise parse_error(line, f"missing a value on flag: {name}")
        if name in flags:
            raise parse_error(line, f"duplicate flag specified: {name}")
        flags[name] = value
        rest = after.lstrip()
    return flags, rest


def _json_list(rest: str) -> list[str] | None:
    if not rest.startswith("["):
        return None
    try:
        value = json.loads(rest)
    except ValueError:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return None
    return value


def _shape(instr: Instruction, escape: str) -> Instruction:
    cmd, rest, line = instr.cmd, instr.rest, instr.line
    needs_args = cmd not in ("run", "cmd", "entrypoint")
    if needs_args and not rest:
        raise parse_error(line, f"{cmd.upper()} requires at least one argument")
    if cmd in ("run", "cmd", "entrypoint", "shell", "volume", "copy", "add"):
        exec_form = _json_list(rest)
        if exec_form is not None:
            if cmd in ("copy", "add") and len(exec_form) < 2:
                raise parse_error(line, f"{cmd.upper()} requires at least two arguments")
            return attrs.evolve(instr, json=True, args=exec_form)
        if cmd == "shell":
            raise parse_error(line, "SHELL requires the arguments to be in JSON form")
        if cmd in ("copy", "add", "volume"):
            words = split_words(rest, escape)
            if cmd != "volume" and len(words) < 2:
                raise parse_error(line, f"{cmd.upper()} requires at least two arguments")
            return attrs.evolve(instr, args=words)
        return attrs.evolve(instr, args=[rest] if rest else [])
    if cmd in ("env", "label"):
        return attrs.evolve(instr, args=_name_values(cmd, rest, escape, line))
    if cmd == "arg":
        return attrs.evolve(instr, args=split_words(rest, escape))
    if cmd == "from":
        words = rest.split()
        if len(words) not in (1, 3) or (len(words) == 3 and words[1].lower() != "as"):
            raise parse_error(line, "FROM requires either one or three arguments")
        if len(words) == 3 and not STAGE_NAME.match(words[2].lower()):
            raise parse_error(line, f'invalid name for build stage: "{words[2]}", name can\'t start with a '
                                    "number or contain symbols")
        return attrs.evolve(instr, args=[words[0], words[2].lower()] if len(words) == 3 else [words[0]])
    if cmd == "healthcheck":
        kind, _, command = rest.partition(" ")
        kind = kind.upper()
        if kind == "NONE":
            if command.strip() or instr.flags:
                raise parse_error(line, "HEALTHCHECK NONE takes no arguments")
            return attrs.evolve(instr, args=["NONE"])
        if kind != "CMD":
            raise parse_error(line, f"Unknown type \"{kind}\" in HEALTHCHECK (try CMD)")
        command = command.strip()
        if not command:
            raise parse_error(line, "Missing command after HEALTHCHECK CMD")
        exec_form = _json_list(command)
        if exec_form is not None:
            return attrs.evolve(instr, json=True, args=["CMD", *exec_form])
        return attrs.evolve(instr, args=["CMD-SHELL", command])
    if cmd in ("expose",):
        return attrs.evolve(instr, args=split_words(rest, escape))
    if cmd in ("workdir", "user", "stopsignal", "maintainer", "onbuild"):
        return attrs.evolve(instr, args=[rest])
    raise parse_error(line, f"unknown instruction: {cmd.upper()}")  # pragma: no cover


def _name_values(cmd: str, rest: str, escape: str, line: int) -> list[str]:
    """ENV/LABEL arguments as ``name=value`` words (values still unexpanded, quotes kept):
    ``K=V K2="v 2"``, or the legacy ``K value with spaces`` (one pair)."""
    words = split_words(rest, escape)
    if not words:
        raise parse_error(line, f"{cmd.upper()} requires at least one argument")
    if "=" not in words[0]:
        # legacy form: the name, then everything after the first whitespace is the value
        name, _, value = rest.partition(" ") if " " in rest.split("\t", 1)[0] else rest.partition("\t")
        if not value.strip():
            raise parse_error(line, f"{cmd.upper()} must have two arguments")
        return [f"{name}={value.strip()}"]
    for word in words:
        if "=" not in word:
            raise parse_error(line, f"Syntax error - can't find = in \"{word}\". Must be of the form: name=value")
    return words


def split_words(rest: str, escape: str = DEFAULT_ESCAPE) -> list[str]:
    """Split on whitespace outside quotes; quotes and escapes stay (expansion removes them),
    as moby's parseWords."""
    words: list[str] = []
    word = ""
    quote = ""
    in_word = False
    i = 0
    while i < len(rest):
        ch = rest[i]
        if not in_word:
            if ch.isspace():
                i += 1
                continue
            in_word = True
        if ch.isspace() and not quote:
            words.append(word)
            word, in_word = "", False
            i += 1
            continue
        if ch == escape and quote != "'" and i + 1 < len(rest):
            word += ch + rest[i + 1]
            i += 2
            continue
        if quote and ch == quote:
            quote = ""
        elif not quote and ch in ("'", '"'):
            quote = ch
        word += ch
        i += 1
    if in_word:
        words.append(word)
    return words


# --- expansion ------------------------------------------------------------------------------


class Lexer:
    """docker's word expansion: quotes removed, ``$VAR`` and ``${VAR…}`` replaced from
    ``env`` (a mapping), the escape character escaping what follows."""

    def __init__(self, escape: str = DEFAULT_ESCAPE) -> None:
        self.escape = escape

    def word(self, text: str, env: dict[str, str]) -> str:
        """One word, fully expanded and unquoted."""
        words = self._scan(text, env, split=False)
        return words[0] if words else ""

    def words(self, text: str, env: dict[str, str]) -> list[str]:
        """Several words: split on whitespace outside quotes, after expansion (a variable's
        value is not split, as dockerd's ProcessWords)."""
        return self._scan(text, env, split=True)

    def _scan(self, text: str, env: dict[str, str], *, split: bool) -> list[str]:
        words: list[str] = []
        current: list[str] = []
        started = False
        i = 0
        n = len(text)
        while i < n:
            ch = text[i]
            if split and ch.isspace():
                if started:
                    words.append("".join(current))
                    current, started = [], False
                i += 1
                continue
            started = True
            if ch == "'":
                end = text.find("'", i + 1)
                if end < 0:
                    raise InvalidArgument(f"unexpected end of statement while looking for matching single-quote in {text!r}")
                current.append(text[i + 1:end])
                i = end + 1
            elif ch == '"':
                i = self._double_quoted(text, i + 1, env, current)
            elif ch == self.escape:
                if i + 1 < n:
                    current.append(text[i + 1])
                    i += 2
                else:
                    current.append(ch)
                    i += 1
            elif ch == "$":
                value, i = self._variable(text, i, env)
                current.append(value)
            else:
                current.append(ch)
                i += 1
        if started:
            words.append("".join(current))
        return words

    def _double_quoted(self, text: str, i: int, env: dict[str, str], out: list[str]) -> int:
        n = len(text)
        while i < n:
            ch = text[i]
            if ch == '"':
                return i + 1
            if ch == self.escape and i + 1 < n and text[i + 1] in ('"', "$", self.escape):
                out.append(text[i + 1])
                i += 2
            elif ch == "$":
                value, i = self._variable(text, i, env)
                out.append(value)
            else:
                out.append(ch)
                i += 1
        raise InvalidArgument(f"unexpected end of statement while looking for matching double-quote in {text!r}")

    def _variable(self, text: str, i: int, env: dict[str, str]) -> tuple[str, int]:
        """``text[i]`` is ``$``: the value and the index after the reference."""
        n = len(text)
        j = i + 1
        if j < n and text[j] == "{":
            end = self._closing_brace(text, j + 1)
            body = text[j + 1:end]
            return self._braced(body, env, text), end + 1
        k = j
        if k < n and _NAME_START.match(text[k]):
            while k < n and _NAME_CHAR.match(text[k]):
                k += 1
            return env.get(text[j:k], ""), k
        if k < n and text[k].isdigit():  # $1 …: positional, always empty here
            return "", k + 1
        return "$", j

    def _closing_brace(self, text: str, i: int) -> int:
        depth = 1
        while i < len(text):
            if text[i] == self.escape:
                i += 2
                continue
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    return i
            i += 1
        raise InvalidArgument(f"missing '}}' in {text!r}")

    def _braced(self, body: str, env: dict[str, str], text: str) -> str:
        match = re.match(r"[A-Za-z_][A-Za-z0-9_]*", body)
        if not match:
            raise InvalidArgument(f"bad substitution in {text!r}: {{{body}}}")
        name = match.group(0)
        op = body[len(name):]
        if not op:
            return env.get(name, "")
        value = env.get(name)
        for modifier in (":-", ":+", ":?", "-", "+", "?"):
            if op.startswith(modifier):
                word = self.word(op[len(modifier):], env)
                colon = modifier.startswith(":")
                is_set = value is not None and (value != "" or not colon)
                kind = modifier[-1]
                if kind == "-":
                    return value if is_set and value is not None else word
                if kind == "+":
                    return word if is_set else ""
                if not is_set:
                    raise InvalidArgument(f"{name}: {word or 'is not allowed to be unset'}")
                return value or ""
        raise InvalidArgument(f"unsupported modifier ({op[:2]}) in substitution in {text!r}")
