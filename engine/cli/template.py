"""The subset of Go templates that ``--format`` takes, as docker users write them.

Supported:

- field paths: ``{{.ID}}``, ``{{.State.Status}}``, ``{{.}}``; a missing key prints
  ``<no value>`` as Go's maps do;
- functions: ``json``, ``upper``, ``lower``, ``title``, ``len``, ``join LIST SEP``,
  ``index MAP KEY...``, ``split TEXT SEP``, ``println``; and methods of a row such as
  ``{{.Label "com.example"}}``;
- pipelines: ``{{.Names | json}}``, ``{{json .Config}}``; string literals ``"..."``;
- ``{{-`` / ``-}}`` trim the spaces next to them; ``\\t`` and ``\\n`` written as two
  characters on a command line are a tab and a newline (as docker's CLI does);
- ``table`` in front: a header row (column names from the fields) and aligned columns.

Anything else (``range``, ``if``, ``with``, variables, comparisons) is refused with
``InvalidArgument`` naming the construct, rather than printing something wrong.

Values print the way Go's ``fmt`` prints them: ``true``/``false``, ``[a b]`` for a list,
``map[k:v]`` for a map.
"""

from __future__ import annotations

from engine.errors import InvalidArgument

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

UNSUPPORTED = ("range", "if", "with", "else", "end", "define", "template", "block", "not",
               "and", "or", "eq", "ne", "lt", "le", "gt", "ge", "printf", "print")
SUPPORTED_TEXT = (".Field.Path, json, upper, lower, title, len, join, index, split, println, "
                  "pipelines (|), string literals, {{- -}}, and a leading 'table'")
NO_VALUE = "<no value>"


class Missing:
    """A key the data does not have (Go prints ``<no value>``)."""


MISSING = Missing()


def go_str(value: Any) -> str:
    if value is None or isinstance(value, Missing):
        return NO_VALUE
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list | tuple):
        return "[" + " ".join(go_str(v) for v in value) + "]"
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{go_str(v)}" for k, v in sorted(value.items())) + "]"
    return str(value)


def _json(value: Any) -> str:
    import json

    if isinstance(value, Missing):
        value = None
    elif isinstance(value, dict):  # a row's methods ({{.Label "k"}}) are not data
        value = {k: v for k, v in value.items() if not callable(v)}
    return json.dumps(value, default=str, separators=(",", ":"))


def _join(items: Any, sep: str) -> str:
    return sep.join(go_str(i) for i in (items or []))


def _index(value: Any, *keys: Any) -> Any:
    for key in keys:
        if isinstance(value, dict):
            value = value.get(key, MISSING)
        elif isinstance(value, list) and isinstance(key, int | str) and str(key).isdigit():
            value = value[int(key)] if int(key) < len(value) else MISSING
        else:
            return MISSING
    return value


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "json": _json,
    "upper": lambda v: go_str(v).upper(),
    "lower": lambda v: go_str(v).lower(),
    "title": lambda v: go_str(v).title(),
    "len": lambda v: len(v or []),
    "join": _join,
    "index": _index,
    "split": lambda v, sep: go_str(v).split(sep),
    "println": lambda *v: " ".join(go_str(x) for x in v) + "\n",
}


def _tokens(expr: str) -> list[str]:
    """Words of an action: field paths, names, ``|`` and quoted strings (kept quoted)."""
    out: list[str] = []
    i, n = 0, len(expr)
    while i < n:
        ch = expr[i]
        if ch.isspace():
            i += 1
        elif ch == "|":
            out.append("|")
            i += 1
        elif ch in "\"`":
            end = i + 1
            while end < n and expr[end] != ch:
                end += 2 if expr[end] == "\\" and ch == '"' else 1
            if end >= n:
                raise InvalidArgument(f"template: unterminated string in {{{{{expr}}}}}")
            out.append(expr[i:end + 1])
            i = end + 1
        elif ch in "()$":
            raise InvalidArgument(f"template: {ch!r} in {{{{{expr}}}}} is not supported; supported: {SUPPORTED_TEXT}")
        else:
            end = i
            while end < n and not expr[end].isspace() and expr[end] not in "|\"`()":
                end += 1
            out.append(expr[i:end])
            i = end
    return out


def _literal(token: str) -> Any:
    if token[0] == "`":
        return token[1:-1]
    if token[0] == '"':
        import json

        return json.loads(token)
    if token.lstrip("-").isdigit():
        return int(token)
    if token in ("true", "false"):
        return token == "true"
    return None


class Template:
    def __init__(self, text: str) -> None:
        self.table = False
        stripped = text.lstrip()
        if stripped.startswith("table"):
            self.table = True
            text = stripped[len("table"):].lstrip(" ")
        text = text.replace("\\t", "\t").replace("\\n", "\n")
        self.parts = self._parse(text)

    def _parse(self, text: str) -> list[tuple[str, Any]]:
        parts: list[tuple[str, Any]] = []
        pos = 0
        while True:
            start = text.find("{{", pos)
            if start < 0:
                parts.append(("text", text[pos:]))
                break
            end = text.find("}}", start)
            if end < 0:
                raise InvalidArgument(f"template: unclosed action in {text!r}")
            literal = text[pos:start]
            inner = text[start + 2:end]
            if inner.startswith("-") and inner[1:2] in (" ", "\t", "\n"):
                literal = literal.rstrip()
                inner = inner[1:]
            trim_after = inner.endswith(" -") or inner.endswith("\t-")
            if trim_after:
                inner = inner[:-1]
            parts.append(("text", literal))
            parts.append(("action", self._compile(inner.strip())))
            pos = end + 2
            if trim_after:
                while pos < len(text) and text[pos].isspace():
                    pos += 1
        return parts

    def _compile(self, expr: str) -> list[list[str]]:
        if not expr:
            raise InvalidArgument("template: empty action {{}}")
        if expr.startswith("/*"):
            return []
        commands: list[list[str]] = [[]]
        for token in _tokens(expr):
            if token == "|":
                commands.append([])
            else:
                commands[-1].append(token)
        for command in commands:
            if not command:
                raise InvalidArgument(f"template: empty command in {{{{{expr}}}}}")
            head = command[0]
            if head in UNSUPPORTED or head.startswith("$"):
                raise InvalidArgument(
                    f"template: {head!r} is not supported by engctl's --format; supported: {SUPPORTED_TEXT}")
            if not head.startswith(".") and head not in FUNCTIONS and _literal(head) is None:
                raise InvalidArgument(f"template: function {head!r} is not defined; supported: {SUPPORTED_TEXT}")
        return commands

    def fields(self) -> list[str]:
        """The first field path of each action (a table's column names)."""
        names = []
        for kind, value in self.parts:
            if kind != "action" or not value:
                continue
            words = [w for cmd in value for w in cmd if w.startswith(".")]
            names.append(words[0] if words else "")
        return names

    def render(self, data: Any) -> str:
        out = []
        for kind, value in self.parts:
            if kind == "text":
                out.append(value)
            elif value:
                result: Any = MISSING
                for i, command in enumerate(value):
                    result = self._run(command, data, None if i == 0 else result, piped=i > 0)
                out.append(go_str(result))
        return "".join(out)

    def _run(self, command: list[str], data: Any, previous: Any, *, piped: bool = False) -> Any:
        """One command of a pipeline; a piped value goes last among the arguments."""
        head, args = command[0], command[1:]
        values = [_evaluate(a, data) for a in args]
        if piped:
            values.append(previous)
        if head in FUNCTIONS:
            try:
                return FUNCTIONS[head](*values)
            except TypeError:
                raise InvalidArgument(f"template: wrong number of arguments for {head}") from None
        value = _evaluate(head, data)
        if callable(value):
            return value(*values)
        if values:
            raise InvalidArgument(f"template: {head} is not a function; it takes no arguments")
        return value


def _evaluate(word: str, data: Any) -> Any:
    if word.startswith("."):
        return _field(data, word)
    literal = _literal(word)
    if literal is None and word not in ("true", "false"):
        raise InvalidArgument(f"template: cannot use {word!r} as a value")
    return literal


def _field(data: Any, path: str) -> Any:
    value = data
    for part in [p for p in path.split(".") if p]:
        if isinstance(value, dict):
            value = value.get(part, MISSING)
        else:
            return MISSING
    return value


def header(field: str, names: dict[str, str] | None = None) -> str:
    """A table column's title: the command's own name for it, else the field in capitals
    with its words apart (``.RunningFor`` → ``RUNNING FOR``)."""
    last = field.rsplit(".", 1)[-1]
    if names and last in names:
        return names[last]
    words, word = [], ""
    for ch in last:
        if ch.isupper() and word and not word[-1].isupper():
            words.append(word)
            word = ""
        word += ch
    words.append(word)
    return " ".join(words).upper()


def render_rows(fmt: str, rows: list[Any], headers: dict[str, str] | None = None) -> str:
    """Every row through the template; with ``table``, a header and aligned columns."""
    template = Template(fmt)
    lines = [template.render(r) for r in rows]
    if not template.table:
        return "".join(line + "\n" for line in lines)
    titles = "\t".join(header(f, headers) for f in template.fields())
    table = [titles.split("\t")] + [line.split("\t") for line in lines]
    widths: dict[int, int] = {}
    for row in table:
        for i, cell in enumerate(row[:-1]):
            widths[i] = max(widths.get(i, 0), len(cell))
    text = []
    for row in table:
        cells = [cell.ljust(widths[i]) if i < len(row) - 1 else cell for i, cell in enumerate(row)]
        text.append("   ".join(cells).rstrip())
    return "".join(line + "\n" for line in text)
