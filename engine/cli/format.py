"""Output helpers for engctl: tables, JSON, Go-template-free ``--format`` values."""

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
    """A small subset of Go templates: ``{{.State.Status}}``, ``{{json .Config}}``."""
    import json
    import re

    out = fmt
    for expr in re.findall(r"\{\{\s*([^}]*)\s*\}\}", fmt):
        value: Any = obj
        path = expr.strip()
        wrap_json = path.startswith("json ")
        path = path.removeprefix("json ").strip()
        for part in [p for p in path.split(".") if p]:
            value = value.get(part) if isinstance(value, dict) else None
        if wrap_json or isinstance(value, dict | list):
            text = json.dumps(value)
        elif value is None:
            text = "<no value>"
        else:
            text = str(value).lower() if isinstance(value, bool) else str(value)
        out = out.replace("{{" + expr + "}}", text, 1)
    return out


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
