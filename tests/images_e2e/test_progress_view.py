"""engctl's pull/push progress: redrawn per-layer bars on a terminal, plain lines otherwise."""

from __future__ import annotations

import io
import re

from engine.cli.commands.images import ProgressView


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def pull_events() -> list[dict[str, object]]:
    """What the daemon streams for a two-layer pull (the shape engine.images.pull emits)."""
    events: list[dict[str, object]] = [{"id": "aaaaaaaaaaaa", "status": "Already exists"}]
    total = 4_000_000
    for current in (1_000_000, 2_000_000, 3_000_000, 4_000_000):
        events.append({"id": "bbbbbbbbbbbb", "status": "Downloading", "current": current,
                       "total": total})
    events += [
        {"id": "bbbbbbbbbbbb", "status": "Verifying"},
        {"id": "bbbbbbbbbbbb", "status": "Download complete"},
        {"id": "aaaaaaaaaaaa", "status": "Pull complete"},
        {"id": "bbbbbbbbbbbb", "status": "Pull complete"},
    ]
    return events


def screen(output: str) -> list[str]:
    """Replay the cursor-up / clear-line escapes into the final screen lines."""
    lines: list[str] = []
    row = 0
    for token in re.split(r"(\x1b\[\d*A|\x1b\[2K|\n)", output):
        if not token or token == "\x1b[2K":
            continue
        if token.startswith("\x1b["):
            row -= int(token[2:-1] or 1)
        elif token == "\n":
            row += 1
        else:
            while len(lines) <= row:
                lines.append("")
            lines[row] = token
    return lines


def test_tty_redraws_per_layer_lines_with_bars() -> None:
    out = FakeTTY()
    view = ProgressView(out)
    frames = []
    for event in pull_events():
        view.update(event)
        frames.append(out.getvalue())
    text = out.getvalue()
    assert "\x1b[1A" in text and "\x1b[2A" in text, "cursor moves up to redraw the block"
    assert "\x1b[2K" in text, "each redrawn line is cleared first"

    # mid-download: layer a's line and layer b's bar, half full
    middle = screen(frames[2])
    assert middle[0] == "aaaaaaaaaaaa: Already exists"
    assert re.fullmatch(r"bbbbbbbbbbbb: Downloading \[={19}> {20}\] 2MB/4MB", middle[1]), middle
    full = screen(frames[4])[1]
    assert re.fullmatch(r"bbbbbbbbbbbb: Downloading \[={40}\] 4MB/4MB", full), full

    # at the end one line per layer is on screen, in first-seen order
    assert screen(text) == ["aaaaaaaaaaaa: Pull complete", "bbbbbbbbbbbb: Pull complete"]


def test_tty_lines_without_a_layer_join_the_block() -> None:
    out = FakeTTY()
    view = ProgressView(out)
    view.update({"id": "cccccccccccc", "status": "Preparing"})
    view.update({"status": "Pushed manifest", "digest": "sha256:" + "d" * 64})
    view.update({"id": "cccccccccccc", "status": "Pushed"})
    assert screen(out.getvalue()) == [
        "cccccccccccc: Pushed",
        "Pushed manifest sha256:" + "d" * 64,
    ]


def test_plain_output_has_one_line_per_state_change() -> None:
    out = io.StringIO()  # isatty() is False
    view = ProgressView(out)
    for event in pull_events():
        view.update(event)
    assert out.getvalue().splitlines() == [
        "aaaaaaaaaaaa: Already exists",
        "bbbbbbbbbbbb: Downloading",
        "bbbbbbbbbbbb: Verifying",
        "bbbbbbbbbbbb: Download complete",
        "aaaaaaaaaaaa: Pull complete",
        "bbbbbbbbbbbb: Pull complete",
    ]
    assert "\x1b" not in out.getvalue()


def test_quiet_prints_nothing() -> None:
    for out in (io.StringIO(), FakeTTY()):
        view = ProgressView(out, quiet=True)
        for event in pull_events():
            view.update(event)
        assert out.getvalue() == ""


def test_a_closed_or_odd_stream_counts_as_not_a_tty() -> None:
    out = io.StringIO()
    out.close()
    assert ProgressView(out).tty is False
