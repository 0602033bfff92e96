"""The import layering (STYLE.md section 2), read from the source with ``ast``: nothing is
imported, so a module that would fail or be slow to import is still checked.

- engine/actors and engine/plugins never import the daemon's upper layers (engine.supervisor,
  engine.api, engine.rpc): the arrows point one way.
- engctl's import closure stays light: engine.cli.main and every engine.cli.commands module,
  followed through engine.* imports transitively, must not reach trio, cattrs, pluggy, httpx
  or daemon code. The commands import lazily (inside functions: ``pull_image`` from the
  images commands, ``human_duration``, msgpack in engine.rpc.protocol on first use), so
  function-level imports count too; only ``if TYPE_CHECKING:`` blocks, which never run, are
  left out. Today nothing in that closure imports daemon code lazily for the daemon's own
  use; if something must, it goes in ``DAEMON_SIDE_ONLY`` with the reason.
- cattrs is configured in one place: only engine/convert.py imports it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import attrs

REPO = Path(__file__).resolve().parents[2]

DAEMON = ("engine.supervisor", "engine.api", "engine.rpc")
CLI_FORBIDDEN = ("trio", "cattrs", "pluggy", "httpx", "engine.supervisor", "engine.api",
                 "engine.rpc.server", "engine.actors.container")
# (importing module, imported module) -> why it is fine although the CLI closure reaches it
DAEMON_SIDE_ONLY: dict[tuple[str, str], str] = {}


@attrs.frozen
class Import:
    importer: str
    name: str  # the absolute module name
    line: int
    lazy: bool  # inside a function: runs only when the function is called

    def __str__(self) -> str:
        where = "inside a function" if self.lazy else "at module level"
        return f"{self.importer}:{self.line} imports {self.name} ({where})"


def module_path(root: Path, name: str) -> Path | None:
    base = root.joinpath(*name.split("."))
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _Collector(ast.NodeVisitor):
    def __init__(self, root: Path, module: str, is_package: bool) -> None:
        self.root, self.module, self.is_package = root, module, is_package
        self.found: list[Import] = []
        self._depth = 0

    def _add(self, name: str, node: ast.stmt) -> None:
        self.found.append(Import(self.module, name, node.lineno, self._depth > 0))

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):  # never runs: type-only imports
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self._depth += 1
        self.generic_visit(node)
        self._depth -= 1

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:  # relative: from the module's package, one level up per extra dot
            parts = self.module.split(".")
            package = parts if self.is_package else parts[:-1]
            package = package[: len(package) - (node.level - 1)]
            base = ".".join([*package, *([node.module] if node.module else [])])
        else:
            base = node.module or ""
        self._add(base, node)
        for alias in node.names:  # `from engine.cli.commands import images` imports a module
            if module_path(self.root, f"{base}.{alias.name}") is not None:
                self._add(f"{base}.{alias.name}", node)


def module_imports(root: Path, module: str) -> list[Import]:
    """The imports ``module`` (under ``root``) runs, at module level or in functions."""
    path = module_path(root, module)
    assert path is not None, f"no module {module} under {root}"
    collector = _Collector(root, module, path.name == "__init__.py")
    collector.visit(ast.parse(path.read_text(), str(path)))
    return collector.found


def modules_under(root: Path, package: str) -> list[str]:
    base = root.joinpath(*package.split("."))
    names = []
    for path in sorted(base.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names.append(".".join(parts))
    return names


def closure(root: Path, starts: Iterable[str]) -> dict[str, list[Import]]:
    """Every engine module the ``starts`` import, transitively (with the packages around
    them, whose ``__init__`` runs first), and what each imports."""
    found: dict[str, list[Import]] = {}
    todo = list(starts)
    while todo:
        module = todo.pop()
        if module in found:
            continue
        found[module] = module_imports(root, module)
        for imp in found[module]:
            parts = imp.name.split(".")
            if parts[0] != "engine":
                continue
            for i in range(1, len(parts) + 1):
                name = ".".join(parts[:i])
                if name not in found and module_path(root, name) is not None:
                    todo.append(name)
    return found


def _matches(name: str, prefixes: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def package_violations(root: Path, package: str, forbidden: Iterable[str]) -> list[str]:
    forbidden = tuple(forbidden)
    return [
        str(imp)
        for module in modules_under(root, package)
        for imp in module_imports(root, module)
        if _matches(imp.name, forbidden)
    ]


def cli_starts(root: Path) -> list[str]:
    return ["engine.cli.main", *[m for m in modules_under(root, "engine.cli.commands")
                                 if m != "engine.cli.commands"]]


def closure_violations(root: Path, starts: Iterable[str], forbidden: Iterable[str],
                       allowed: dict[tuple[str, str], str] | None = None) -> list[str]:
    forbidden, allowed = tuple(forbidden), allowed or {}
    return [
        str(imp)
        for imports in closure(root, starts).values()
        for imp in imports
        if _matches(imp.name, forbidden) and (imp.importer, imp.name) not in allowed
    ]


# --- the project's rules ---------------------------------------------------------------------


def test_actors_do_not_import_the_daemon() -> None:
    assert package_violations(REPO, "engine.actors", DAEMON) == []


def test_actors_reach_runtimes_only_through_the_runtime_protocol() -> None:
    """A runtime's internals (conmon, exec sessions...) are the runtime plugin's: actors
    call them through ``engine.plugin.Runtime`` (``wait_exit``, ``surviving_execs``...)."""
    assert package_violations(REPO, "engine.actors", ("engine.oci.exec", "engine.oci.conmon",
                                                      "engine.oci.cli_runtime")) == []


def test_plugins_do_not_import_the_daemon() -> None:
    assert package_violations(REPO, "engine.plugins", DAEMON) == []


def test_engctl_import_closure_stays_light() -> None:
    starts = cli_starts(REPO)
    assert {"engine.cli.main", "engine.cli.commands.containers"} <= set(starts)
    reached = closure(REPO, starts)
    assert "engine.client.sync" in reached  # the walk does follow engine.* imports
    assert closure_violations(REPO, starts, CLI_FORBIDDEN, DAEMON_SIDE_ONLY) == []
    for importer, name in DAEMON_SIDE_ONLY:  # no stale exceptions
        assert any(i.name == name for i in reached.get(importer, [])), (importer, name)


def test_only_convert_imports_cattrs() -> None:
    users = {
        imp.importer
        for module in modules_under(REPO, "engine")
        for imp in module_imports(REPO, module)
        if _matches(imp.name, ("cattrs",))
    }
    assert users == {"engine.convert"}


# --- the checker itself must be able to fail --------------------------------------------------


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_checker_finds_violations_in_a_synthetic_tree(tmp_path: Path) -> None:
    _write(tmp_path, {
        "engine/__init__.py": "",
        "engine/actors/__init__.py": "",
        "engine/actors/good.py": (
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from engine.supervisor.app import App\n"  # type-only
            "import engine.errors\n"
        ),
        "engine/actors/bad.py": "def later():\n    from ..supervisor import restart\n",
        "engine/plugins/__init__.py": "",
        "engine/plugins/x/__init__.py": "",
        "engine/plugins/x/plugin.py": "import engine.rpc.methods as m\n",
        "engine/supervisor/__init__.py": "",
        "engine/supervisor/restart.py": "",
        "engine/errors.py": "",
        "engine/cli/__init__.py": "",
        "engine/cli/main.py": "from engine.cli import helper\nimport os\n",
        "engine/cli/helper.py": "def f():\n    from engine.util import deep\n",
        "engine/cli/commands/__init__.py": "",
        "engine/cli/commands/ok.py": "import json\n",
        "engine/cli/commands/slow.py": "from engine.api import containers\n",
        "engine/util/__init__.py": "",
        "engine/util/deep.py": "import trio\n",
        "engine/api/__init__.py": "",
        "engine/api/containers.py": "",
    })
    actors = package_violations(tmp_path, "engine.actors", DAEMON)
    assert actors == ["engine.actors.bad:2 imports engine.supervisor (inside a function)",
                      "engine.actors.bad:2 imports engine.supervisor.restart (inside a function)"]
    plugins = package_violations(tmp_path, "engine.plugins", DAEMON)
    assert plugins == ["engine.plugins.x.plugin:1 imports engine.rpc.methods (at module level)"]

    starts = cli_starts(tmp_path)
    assert set(starts) == {"engine.cli.main", "engine.cli.commands.ok", "engine.cli.commands.slow"}
    found = closure_violations(tmp_path, starts, CLI_FORBIDDEN)
    assert sorted(found) == [
        "engine.cli.commands.slow:1 imports engine.api (at module level)",
        "engine.cli.commands.slow:1 imports engine.api.containers (at module level)",
        "engine.util.deep:1 imports trio (at module level)",  # two hops, one of them lazy
    ]
    allowed = {("engine.util.deep", "trio"): "test"}
    assert len(closure_violations(tmp_path, starts, CLI_FORBIDDEN, allowed)) == 2
