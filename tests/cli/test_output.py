"""engctl's output helpers that stand in for json (so the listing commands need not import it)."""

from __future__ import annotations

import json
import random

from engine.cli.commands.containers import json_string


def test_json_string_quotes_as_json_dumps_does() -> None:
    rng = random.Random(6)
    samples = ["", "sh -c 'echo \"hi\"'", "tab\there\nnewline\\", "é€😀\u2028\x7f\x00\x1f", "\ud800"]
    for _ in range(5000):
        samples.append("".join(chr(rng.choice([rng.randrange(0x80), rng.randrange(0x80, 0x3000)]))
                               for _ in range(rng.randrange(12))))
    for text in samples:
        assert json_string(text) == json.dumps(text, ensure_ascii=False), repr(text)
