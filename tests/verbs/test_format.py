"""--format: docker's common Go-template forms (engine.cli.template's subset) and a clear
error for the rest; engctl's start-up stays light."""

from __future__ import annotations

import json

import pytest

from engine.cli.template import Template, render_rows
from engine.errors import InvalidArgument
from engine.testing.daemon import Daemon
from tests.cli.test_startup_imports import engctl_imports, heavy
from tests.verbs.conftest import engctl, run_detached

ROW = {"ID": "abc", "Names": ["x", "y"], "State": {"Status": "running", "Running": True},
       "Labels": {"a": "b"}, "Label": lambda k: {"a": "b"}.get(k, ""), "N": 3}


@pytest.mark.parametrize("fmt, expected", [
    ("{{.ID}}", "abc"),
    ("{{ .State.Status }}", "running"),
    ("{{.State.Running}}", "true"),
    ("{{json .Names}}", '["x","y"]'),
    ("{{.Names | json}}", '["x","y"]'),
    ("{{json .State}}", '{"Status":"running","Running":true}'),
    ("{{join .Names \",\"}}", "x,y"),
    ("{{index .Labels \"a\"}}", "b"),
    ("{{.Label \"a\"}}", "b"),
    ("{{.Missing}}", "<no value>"),
    ("{{.Names}}", "[x y]"),
    ("{{.Labels}}", "map[a:b]"),
    ("{{upper .ID}}-{{len .Names}}", "ABC-2"),
    ("id={{.ID}}\\tn={{.N}}", "id=abc\tn=3"),
    ("{{- .ID -}} ", "abc"),
])
def test_supported_forms(fmt: str, expected: str) -> None:
    assert Template(fmt).render(ROW) == expected


@pytest.mark.parametrize("fmt, word", [
    ("{{range .Names}}{{.}}{{end}}", "range"), ("{{if .ID}}x{{end}}", "if"),
    ("{{$x := .ID}}", "$"), ("{{printf \"%s\" .ID}}", "printf"), ("{{nosuch .ID}}", "nosuch"),
    ("{{.ID", "unclosed"),
])
def test_unsupported_forms_fail_clearly(fmt: str, word: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        Template(fmt).render(ROW)
    assert word in str(info.value)


def test_table_aligns_columns_under_docker_headers() -> None:
    rows = [{"ID": "a1", "Names": "long-name"}, {"ID": "b2222222", "Names": "n"}]
    out = render_rows("table {{.ID}}\t{{.Names}}", rows, {"ID": "CONTAINER ID"})
    assert out.splitlines() == ["CONTAINER ID   NAMES", "a1             long-name", "b2222222       n"]


def test_ps_images_inspect_formats(engine: Daemon) -> None:
    cid = run_detached(engine, "sleep 1000", name="fmt-test", labels={"team": "core"})
    assert engctl(engine, "ps", "--format", "{{.ID}} {{.Names}} {{.Label \"team\"}}").stdout.decode() \
        == f"{cid[:12]} fmt-test core\n"
    table = engctl(engine, "ps", "--format", "table {{.Names}}\t{{.Status}}").stdout.decode().splitlines()
    assert table[0].split() == ["NAMES", "STATUS"] and table[1].startswith("fmt-test")
    line = engctl(engine, "ps", "--format", "{{json .}}").stdout.decode()
    assert json.loads(line)["Names"] == "fmt-test" and "Label" not in json.loads(line)
    assert engctl(engine, "inspect", "--format", "{{.State.Status}} {{.Name}}", cid).stdout == b"running /fmt-test\n"
    assert json.loads(engctl(engine, "inspect", "-f", "{{json .Config.Labels}}", cid).stdout)["team"] == "core"
    images = engctl(engine, "images", "--format", "{{.Repository}}:{{.Tag}}").stdout.decode()
    assert "busybox:latest" in images
    bad = engctl(engine, "ps", "--format", "{{range .}}x{{end}}", check=False)
    assert bad.returncode == 125 and b"not supported" in bad.stderr


@pytest.mark.parametrize("argv", [["ps", "--format", "{{.ID}}"], ["stats", "--no-stream"],
                                  ["cp", "a:/x", "-"], ["update", "--memory", "64m", "a"]])
def test_new_verbs_parse_without_heavy_imports(argv: list[str]) -> None:
    _, added = engctl_imports(f"m.parse({argv!r}) and 0")
    assert heavy(added) == []
