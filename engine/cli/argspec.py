"""engctl's command-line definitions, recorded cheaply and parsed without argparse when easy.

Why: importing argparse (and the ``re``/``enum``/``gettext`` it pulls in) and building ~80
sub-parsers cost engctl more than its whole start-up budget. The command modules still
describe their flags with argparse's own calls (``add_parser``, ``add_argument``,
``set_defaults``, ``add_subparsers``), but those calls land on the recorders below. Then:

- ``fast_parse`` reads a command line against the recording for the plain cases (exact long
  or short options, ``--opt=value``, ``-eVALUE``, grouped boolean flags ``-dq``, positionals
  after the options, a ``REMAINDER`` command) and returns the same namespace argparse would;
- anything else (``--help``, errors, abbreviations, ``--``, options between positionals,
  unknown actions) makes it give up, and the recording is replayed onto real argparse
  parsers, which then parse, explain errors and print help exactly as before.

tests/cli checks the two paths agree on a corpus of command lines.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable
    from typing import Any, NoReturn

# argparse's own values, so the command modules need not import argparse.
REMAINDER = "..."
SUPPRESS = "==SUPPRESS=="

# docker's exit code for an engine or usage error (an unknown flag, a missing argument);
# argparse's own is 2, which docker scripts would read as the container's exit code.
EXIT_USAGE = 125

_VARIADIC = ("?", "+", "*")


class Namespace:
    """The parsed command line (both paths fill one): attributes like argparse.Namespace."""

    def __init__(self, **kwargs: Any) -> None:
        self.__dict__.update(kwargs)

    def __eq__(self, other: object) -> bool:
        return vars(self) == vars(other)

    def __contains__(self, key: str) -> bool:
        return key in self.__dict__

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items())
        return f"Namespace({fields})"

    if TYPE_CHECKING:

        def __getattr__(self, name: str) -> Any: ...


class Commands:
    """Records ``add_subparsers()`` and the sub-parsers added to it."""

    def __init__(self, prog: str, kwargs: dict[str, Any]) -> None:
        self.prog = prog
        self.kwargs = kwargs
        self.dest: str = kwargs.get("dest", SUPPRESS)
        self.parsers: dict[str, Parser] = {}

    def add_parser(self, name: str, **kwargs: Any) -> Parser:
        parser = Parser(f"{self.prog} {name}", kwargs)
        self.parsers[name] = parser
        return parser


class Parser:
    """Records one parser's calls, in order, to replay them onto argparse when needed."""

    def __init__(self, prog: str, kwargs: dict[str, Any] | None = None) -> None:
        self.prog = prog
        self.kwargs = kwargs or {}
        self.ops: list[tuple[str, Any, Any]] = []
        self._built: argparse.ArgumentParser | None = None

    def add_argument(self, *flags: str, **kwargs: Any) -> None:
        self.ops.append(("argument", flags, kwargs))

    def set_defaults(self, **kwargs: Any) -> None:
        self.ops.append(("defaults", None, kwargs))

    def add_subparsers(self, **kwargs: Any) -> Commands:
        commands = Commands(self.prog, kwargs)
        self.ops.append(("subparsers", commands, None))
        return commands

    def print_help(self, file: Any = None) -> None:
        self.build().print_help(file)

    def build(self) -> argparse.ArgumentParser:
        """The real argparse parser for this recording (made once)."""
        if self._built is None:
            options = {k: v for k, v in self.kwargs.items() if k not in ("help", "aliases")}
            self._replay(_usage_error_parser()(prog=self.prog, **options))
        assert self._built is not None
        return self._built

    def _replay(self, real: argparse.ArgumentParser) -> None:
        self._built = real
        for kind, first, kwargs in self.ops:
            if kind == "argument":
                real.add_argument(*first, **kwargs)
            elif kind == "defaults":
                real.set_defaults(**kwargs)
            else:
                real_sub = real.add_subparsers(**first.kwargs)
                for name, child in first.parsers.items():
                    child._replay(real_sub.add_parser(name, **child.kwargs))


def _usage_error_parser() -> type[argparse.ArgumentParser]:
    """argparse's parser, but a usage error exits with ``EXIT_USAGE`` and names the command
    whose help to read. Sub-parsers are made with their parent's class, so every command's
    errors exit the same way. (Made here: argparse is imported only when the fast path gives
    up.)"""
    global _UsageErrorParser
    if _UsageErrorParser is not None:
        return _UsageErrorParser
    import argparse
    import sys

    class UsageErrorParser(argparse.ArgumentParser):
        def parse_args(self, args: Any = None, namespace: Any = None) -> Any:
            # argparse would say "unrecognized arguments" from the top-level parser, which
            # does not say which command they were given to
            argv = list(sys.argv[1:] if args is None else args)
            ns, extras = self.parse_known_args(argv, namespace)
            if extras:
                kind = "unknown flag" if extras[0].startswith("-") else "unexpected argument"
                where = _command_words(self, argv)
                self.error(f"{kind}: {' '.join(extras)}\nSee '{where} --help'.")
            return ns

        def error(self, message: str) -> NoReturn:
            self.print_usage(sys.stderr)
            self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")

    _UsageErrorParser = UsageErrorParser
    return UsageErrorParser


_UsageErrorParser: type[argparse.ArgumentParser] | None = None


def _command_words(parser: argparse.ArgumentParser, argv: list[str]) -> str:
    """The program and (sub-)command words ``argv`` names: ``engctl network create``."""
    words = parser.prog
    while True:
        choices: dict[str, argparse.ArgumentParser] = {}
        for action in parser._actions:
            if action.choices is not None and action.nargs == "A...":  # argparse.PARSER
                choices = action.choices  # type: ignore[assignment]
        found = next((i for i, word in enumerate(argv) if word in choices), None)
        if found is None:
            return words
        parser, argv = choices[argv[found]], argv[found + 1 :]
        words = parser.prog


class _GiveUp(Exception):
    """The fast path does not handle this command line; argparse will."""


class _Action:
    """One recorded argument, reduced to what the fast path needs."""

    def __init__(self, flags: tuple[str, ...], kwargs: dict[str, Any], defaults: dict[str, Any]) -> None:
        self.flags = flags
        self.action = kwargs.get("action", "store")
        self.nargs = kwargs.get("nargs")
        self.type: Callable[[str], Any] | None = kwargs.get("type")
        self.choices = kwargs.get("choices")
        self.required = kwargs.get("required", False)
        self.dest = kwargs.get("dest") or _dest(flags)
        default = False if self.action == "store_true" else None
        self.default = defaults.get(self.dest, kwargs.get("default", default))
        if self.action == "help":  # argparse's help action stores nothing
            self.dest = self.default = SUPPRESS
        if self.action not in ("store", "store_true", "append", "help"):
            raise _GiveUp(f"action {self.action}")
        if flags[0].startswith("-") and self.nargs is not None:
            raise _GiveUp("options with nargs")

    @property
    def takes_value(self) -> bool:
        return self.action in ("store", "append")

    def convert(self, text: str) -> Any:
        value: Any = text
        if self.type is not None:
            try:
                value = self.type(text)
            except (TypeError, ValueError):
                raise _GiveUp("bad value") from None
        if self.choices is not None and value not in self.choices:
            raise _GiveUp("not a choice")
        return value


def _dest(flags: tuple[str, ...]) -> str:
    if not flags[0].startswith("-"):
        return flags[0]
    long = [f for f in flags if f.startswith("--")]
    return (long or list(flags))[0].lstrip("-").replace("-", "_")


class _Plan:
    """A parser's recording, split into options, positionals and sub-commands."""

    def __init__(self, parser: Parser) -> None:
        defaults: dict[str, Any] = {}
        for kind, _, kwargs in parser.ops:
            if kind == "defaults":
                defaults.update(kwargs)
        self.defaults = defaults
        self.options: dict[str, _Action] = {}
        self.actions: list[_Action] = []
        self.positionals: list[_Action] = []
        self.commands: Commands | None = None
        if parser.kwargs.get("add_help", True):
            help_action = _Action(("-h", "--help"), {"action": "help"}, {})
            self.options.update({"-h": help_action, "--help": help_action})
        for kind, first, kwargs in parser.ops:
            if kind == "subparsers":
                if self.positionals or self.commands is not None:
                    raise _GiveUp("positionals before sub-commands")
                self.commands = first
            elif kind == "argument":
                action = _Action(first, kwargs, defaults)
                self.actions.append(action)
                if first[0].startswith("-"):
                    self.options.update(dict.fromkeys(first, action))
                else:
                    self.positionals.append(action)
        if self.commands is not None and self.positionals:
            raise _GiveUp("positionals beside sub-commands")

    def start(self) -> Namespace:
        """A namespace holding the defaults, set the way argparse sets them."""
        ns = Namespace()
        for action in self.actions:
            if action.dest != SUPPRESS and action.default != SUPPRESS:
                setattr(ns, action.dest, action.default)
        if self.commands is not None and self.commands.dest != SUPPRESS:
            setattr(ns, self.commands.dest, None)
        for key, value in self.defaults.items():
            if key not in ns:
                setattr(ns, key, value)
        return ns


def fast_parse(parser: Parser, argv: list[str]) -> Namespace | None:
    """The namespace argparse would produce for ``argv``, or None when argparse must do it."""
    if "--" in argv:
        return None
    try:
        return _parse(parser, argv)
    except _GiveUp:
        return None


def _parse(parser: Parser, argv: list[str]) -> Namespace:
    plan = _Plan(parser)
    ns = plan.start()
    seen: set[int] = set()
    remainder = bool(plan.positionals) and plan.positionals[-1].nargs == REMAINDER
    fixed = len(plan.positionals) - 1 if remainder else len(plan.positionals)
    if remainder and (fixed == 0 or any(a.nargs is not None for a in plan.positionals[:-1])):
        raise _GiveUp("an unusual positional shape before a remainder")
    words: list[str] = []
    rest: list[str] | None = None  # what a REMAINDER positional takes, verbatim
    i = 0
    while i < len(argv):
        token = argv[i]
        if token.startswith("-") and token != "-":
            if words:
                raise _GiveUp("option after a positional")
            i = _take_option(plan, ns, argv, i, seen)
            continue
        if plan.commands is not None:
            _check_required(plan, seen)
            return _sub_command(plan.commands, ns, token, argv[i + 1 :])
        words.append(token)
        i += 1
        if remainder and len(words) == fixed:
            rest = argv[i:]
            break
    _check_required(plan, seen)
    if plan.commands is not None:
        raise _GiveUp("no sub-command: argparse prints the help")
    if remainder:
        if rest is None:
            raise _GiveUp("missing positionals")
        last = plan.positionals[-1]
        setattr(ns, last.dest, [last.convert(w) for w in rest])
    _assign_positionals(plan.positionals[:-1] if remainder else plan.positionals, ns, words)
    return ns


def _sub_command(commands: Commands, ns: Namespace, name: str, rest: list[str]) -> Namespace:
    child = commands.parsers.get(name)
    if child is None:
        raise _GiveUp("unknown command")
    if commands.dest != SUPPRESS:
        setattr(ns, commands.dest, name)
    ns.__dict__.update(vars(_parse(child, rest)))
    return ns


def _take_option(plan: _Plan, ns: Namespace, argv: list[str], i: int, seen: set[int]) -> int:
    """Apply the option at ``argv[i]``; returns the index of the next token."""
    token = argv[i]
    if token.startswith("--"):
        name, eq, inline = token.partition("=")
        action = _option(plan, name)
        if not action.takes_value:
            if eq:
                raise _GiveUp("value for a flag")
            _apply(ns, action, None, seen)
            return i + 1
        if eq:
            _apply(ns, action, inline, seen)
            return i + 1
        return _apply_next(ns, action, argv, i, seen)
    head, eq, inline = token.partition("=")
    if eq and head in plan.options:  # -e=VALUE: argparse tries the part before '=' first
        action = _option(plan, head)
        if not action.takes_value:
            raise _GiveUp("value for a flag")
        _apply(ns, action, inline, seen)
        return i + 1
    action = _option(plan, token[:2])
    if len(token) == 2:
        if not action.takes_value:
            _apply(ns, action, None, seen)
            return i + 1
        return _apply_next(ns, action, argv, i, seen)
    if action.takes_value:
        _apply(ns, action, token[2:], seen)  # -eKEY=VALUE
        return i + 1
    if eq:
        raise _GiveUp("grouped flags with '='")
    for ch in token[1:]:  # grouped flags: -dq
        flag = _option(plan, "-" + ch)
        if flag.takes_value:
            raise _GiveUp("grouped option with a value")
        _apply(ns, flag, None, seen)
    return i + 1


def _option(plan: _Plan, name: str) -> _Action:
    action = plan.options.get(name)
    if action is None or action.action == "help":
        raise _GiveUp("unknown option or help")
    return action


def _apply_next(ns: Namespace, action: _Action, argv: list[str], i: int, seen: set[int]) -> int:
    if i + 1 >= len(argv) or argv[i + 1].startswith("-"):
        raise _GiveUp("missing value")
    _apply(ns, action, argv[i + 1], seen)
    return i + 2


def _apply(ns: Namespace, action: _Action, text: str | None, seen: set[int]) -> None:
    seen.add(id(action))
    if action.action == "store_true":
        setattr(ns, action.dest, True)
    elif action.action == "append":
        items = list(getattr(ns, action.dest, None) or [])  # argparse copies the default list
        items.append(action.convert(text or ""))
        setattr(ns, action.dest, items)
    else:
        setattr(ns, action.dest, action.convert(text or ""))


def _check_required(plan: _Plan, seen: set[int]) -> None:
    for action in plan.options.values():
        if action.required and id(action) not in seen:
            raise _GiveUp("missing required option")
    # argparse converts a string default through the option's type when it was not given
    for action in plan.options.values():
        if id(action) not in seen and isinstance(action.default, str) and action.type is not None:
            raise _GiveUp("typed string default")


def _assign_positionals(positionals: list[_Action], ns: Namespace, words: list[str]) -> None:
    """argparse's matching for the shapes engctl uses: single positionals, then at most one
    ``?``, ``+`` or ``*`` last."""
    variadic = bool(positionals) and positionals[-1].nargs in _VARIADIC
    singles = positionals[:-1] if variadic else positionals
    if any(a.nargs is not None for a in singles):
        raise _GiveUp("an unusual positional shape")
    if len(words) < len(singles):
        raise _GiveUp("missing positionals")
    for action, word in zip(singles, words, strict=False):
        setattr(ns, action.dest, action.convert(word))
    extra = words[len(singles) :]
    if variadic:
        _assign_variadic(ns, positionals[-1], extra)
    elif extra:
        raise _GiveUp("too many positionals")


def _assign_variadic(ns: Namespace, action: _Action, words: list[str]) -> None:
    if action.nargs == "?":
        if len(words) > 1:
            raise _GiveUp("too many positionals")
        if words:
            setattr(ns, action.dest, action.convert(words[0]))
        elif isinstance(action.default, str):
            setattr(ns, action.dest, action.convert(action.default))
        return
    if action.nargs == "+" and not words:
        raise _GiveUp("missing positionals")
    if not words and action.default is not None:
        return  # '*' with nothing given keeps its default
    setattr(ns, action.dest, [action.convert(w) for w in words])
