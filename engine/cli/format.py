"""Output helpers for engctl: tables, JSON, ``--format`` Go templates (engine.cli.template)."""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any


def print_json(obj: Any) -> None:
    import json  # json costs engctl start-up milliseconds (it imports re): only when printing

    json.dump(obj, sys.stdout, indent=4, default=str)
    sys.stdout.write("\n")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, c in enumerate(row):
            widths[i] = max(widths[i], len(c))
    lines = ["   ".join(h.ljust(widths[i]) for i, h in enumerate(headers)).rstrip()]
    for row in cells:
        lines.append("   ".join(c.ljust(widths[i]) for i, c in enumerate(row)).rstrip())
    sys.stdout.write("\n".join(lines) + "\n")


def format_path(obj: Any, fmt: str) -> str:
    """One object through a ``--format`` Go template (engine.cli.template's subset)."""
    from engine.cli.template import Template

    return Template(fmt).render(obj)


def print_formatted(fmt: str, rows: Sequence[Any], headers: dict[str, str] | None = None) -> None:
    """``--format``: ``json`` prints each row as one JSON line (docker's form); anything
    else is a Go template (``table`` in front adds a header and aligns the columns)."""
    if fmt == "json":
        fmt = "{{json .}}"
    from engine.cli.template import render_rows

    sys.stdout.write(render_rows(fmt, list(rows), headers))


def inspect_each(refs: Sequence[str], fetch: Callable[[str], Any], fmt: str) -> int:
    """docker's inspect output for several objects: JSON array, or one formatted line each;
    errors go to stderr and make the exit code 1 without stopping the others."""
    from engine.errors import EngineError

    results = []
    failed = False
    for ref in refs:
        try:
            results.append(fetch(ref))
        except EngineError as e:
            print(f"Error: {e}", file=sys.stderr)
            failed = True
    if fmt and fmt != "json":
        for r in results:
            print(format_path(r, fmt))
    else:
        print_json(results)
    return 1 if failed else 0
