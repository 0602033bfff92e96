"""``CLIRuntime``: ``engine.plugin.Runtime`` for runc-compatible command-line runtimes.

``create`` goes through conmon (the container's parent, see ``engine.oci.conmon``); the other
verbs run ``BINARY --root STATE_ROOT <verb> ...`` as short trio subprocesses. A subclass
sets ``name``/``binary`` and may override ``global_args()`` and ``availability()``.

Error mapping, from the runtime's own stderr: a container it does not know → ``NotFound``;
a verb not allowed in the current state (kill a stopped container, pause a paused one) →
``Conflict``; anything else → ``RuntimeFailure`` with the runtime's text.

Timeouts belong to the caller: every method waits only under the caller's cancel scope.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import trio

from engine.errors import Conflict, InvalidArgument, NotFound, RuntimeFailure, Unavailable
from engine.oci import conmon
from engine.oci.attach import ConmonAttach, resize_conmon_terminal
from engine.oci.exec import ExecHandle, SurvivingExec, find_surviving_execs, start_exec
from engine.oci.runtime_errors import runtime_message, start_error
from engine.plugin import Availability, Created, CreateRequest, ExitInfo, RuntimeState

_NOT_FOUND = re.compile(
    r"does not exist|no such file or directory|not found|cannot open directory", re.I
)
_WRONG_STATE = re.compile(
    r"not running|is running|still running|already running|not paused|is paused|already paused|is stopped"
    r"|no such process|process already finished"
    r"|container not|is in state|cannot (kill|pause|resume|delete) .*(state|status)",
    re.I,
)
_DEFAULT_PROCESS: dict[str, Any] = {
    "terminal": False,
    "user": {"uid": 0, "gid": 0},
    "cwd": "/",
    "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
}


class CLIRuntime:
    """A runc-compatible CLI runtime driven through conmon. See the module docstring."""

    name: str = "oci"
    # Unused since execs run under conmon (``runtime exec --detach``, conmon the subreaper);
    # kept for subclasses that still set it.
    exec_through_reaper: bool = True

    def __init__(
        self,
        name: str,
        binary: str,
        state_root: Path,
        *,
        extra_global_args: list[str] | None = None,
    ) -> None:
        self.name = name
        self.binary = binary
        self.state_root = state_root
        self.extra_global_args = list(extra_global_args or [])

    # --- hooks for subclasses ------------------------------------------------------------

    def global_args(self) -> list[str]:
        """Arguments before the verb on every call (and passed through conmon)."""
        return [f"--root={self.state_root}", *self.extra_global_args]

    def binary_path(self) -> str | None:
        return shutil.which(self.binary)

    def availability(self) -> Availability:
        if self.binary_path() is None:
            return Availability.no(
                f"{self.binary} not found on PATH; install the {self.binary} package"
            )
        if not (conmon.CONMON_BINARY.exists() and os.access(conmon.CONMON_BINARY, os.X_OK)):
            return Availability.no(
                f"{conmon.CONMON_BINARY} is missing: the engine runs containers under conmon; "
                "install the conmon package"
            )
        return Availability.yes()

    def adapt_spec(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Nothing to add for a plain runc-compatible runtime (crun overrides this)."""
        return spec

    # --- helpers ---------------------------------------------------------------------------

    def _require_binary(self) -> str:
        path = self.binary_path()
        if path is None:
            raise Unavailable(f"runtime {self.name}: {self.binary} not found; install it")
        return path

    async def _run(self, *args: str) -> bytes:
        """Run ``BINARY GLOBAL_ARGS args``; its stdout, or a mapped engine error."""
        argv = [self._require_binary(), *self.global_args(), *args]
        result = await trio.run_process(
            argv, capture_stdout=True, capture_stderr=True, check=False,
            stdin=subprocess.DEVNULL, env=conmon.runtime_environment(),
        )  # fmt: skip
        if result.returncode != 0:
            raise self._error(args, result.stderr)
        return result.stdout

    def _error(self, args: tuple[str, ...], stderr: bytes) -> Exception:
        message = runtime_message(stderr) or f"exit status without message from {self.binary}"
        container = args[-1] if args else "?"
        verb = args[0] if args else "?"
        if verb in ("kill", "pause", "resume") and len(args) > 1:
            container = next((a for a in args[1:] if not a.startswith("-")), container)
        text = f"{self.name} {verb} {container}: {message}"
        if _NOT_FOUND.search(message):
            return NotFound(f"{text} (the runtime does not know this container)",
                            runtime_error=message)  # fmt: skip
        if _WRONG_STATE.search(message):
            return Conflict(f"{text} (check the container's state first)", runtime_error=message)
        if verb == "start":
            return start_error(text, message)
        return RuntimeFailure(text, runtime_error=message)

    # --- the Runtime protocol -----------------------------------------------------------------

    async def create(self, request: CreateRequest) -> Created:
        """Create the container under conmon; it is *created* (not started) on return."""
        return await self.create_when_ready(request, None)

    async def create_when_ready(
        self, request: CreateRequest, prepare_bundle: Callable[[], Awaitable[None]] | None
    ) -> Created:
        """``create``, with conmon started before the bundle exists: it goes on once
        ``prepare_bundle()`` has run (see ``engine.oci.conmon.start_conmon``)."""
        binary = self._require_binary()
        return await conmon.start_conmon(
            request, binary, self.global_args(), runtime_name=self.name,
            prepare_bundle=prepare_bundle,
        )  # fmt: skip

    async def start(self, container_id: str) -> None:
        await self._run("start", container_id)

    async def kill(self, container_id: str, signal: int, *, all_processes: bool = False) -> None:
        extra = ["--all"] if all_processes else []
        await self._run("kill", *extra, container_id, str(int(signal)))

    async def pause(self, container_id: str) -> None:
        await self._run("pause", container_id)

    async def resume(self, container_id: str) -> None:
        await self._run("resume", container_id)

    async def delete(self, container_id: str, *, force: bool = False) -> None:
        """Delete the runtime's record of the container. ``force`` kills it first and is
        idempotent (runc already treats an unknown id as done; crun does not)."""
        try:
            await self._run("delete", *(["--force"] if force else []), container_id)
        except NotFound:
            if not force:
                raise

    async def update(self, container_id: str, resources: dict[str, Any]) -> None:
        """``BINARY update --resources FILE ID``: runc and crun both take an OCI
        ``linux.resources`` document there."""
        path = await trio.to_thread.run_sync(_write_resources, resources, container_id)
        try:
            await self._run("update", f"--resources={path}", container_id)
        finally:
            await trio.to_thread.run_sync(lambda: path.unlink(missing_ok=True))

    async def state(self, container_id: str) -> RuntimeState | None:
        try:
            out = await self._run("state", container_id)
        except NotFound:
            return None
        try:
            data = json.loads(out)
            return RuntimeState(id=data["id"], status=data["status"], pid=int(data.get("pid", 0)))
        except (ValueError, KeyError, TypeError):
            raise RuntimeFailure(
                f"{self.name} state {container_id}: unreadable output {out[:200]!r}"
            ) from None

    async def wait_exit(self, container_id: str, state_dir: Path) -> ExitInfo:
        return await conmon.wait_monitor_exit(state_dir, container_id)

    def read_exit(self, container_id: str, state_dir: Path) -> ExitInfo | None:
        return conmon.read_exit(state_dir, container_id)

    def surviving_execs(self, container_id: str, work_dir: Path) -> list[SurvivingExec]:
        return find_surviving_execs(work_dir, container_id)

    async def exec(
        self,
        container_id: str,
        process: dict[str, Any],
        *,
        stdin: bool = False,
        tty: bool = False,
        work_dir: Path | None = None,
        **options: Any,
    ) -> ExecHandle:
        """Start ``process`` (an OCI ``process`` object; missing keys get defaults) in the
        running container, under a conmon of its own, and return its ``ExecHandle`` (see
        ``engine.oci.exec``). ``stdin``: the handle's ``stdin`` feeds the process; ``tty``:
        the process gets a pseudo-terminal (a ``TtyExecHandle``).

        ``work_dir`` holds the session's directory (``execs/<session>``; the container's
        run directory, where a restarted daemon finds surviving sessions; default: the
        system tmp). Cancellation: if cancelled while starting, nothing is left running.
        Errors: ``NotFound``/``Conflict``/``RuntimeFailure`` from the runtime surface
        through the handle's exit code and stderr (the runtime reports them there once it
        runs)."""
        binary = self._require_binary()
        spec = {**_DEFAULT_PROCESS, **process, "terminal": tty}
        if not spec.get("args"):
            raise InvalidArgument("exec needs a command: process['args'] is empty")
        return await start_exec(container_id, spec, work_dir or Path(tempfile.gettempdir()),
                                binary, self.global_args(), stdin=stdin, tty=tty)

    async def attach(self, container_id: str, bundle: Path) -> ConmonAttach:
        """A connection to the running container's stdio through its conmon."""
        return await ConmonAttach.connect(bundle)

    async def resize(self, container_id: str, bundle: Path, rows: int, cols: int) -> None:
        """Set the window size of the container's terminal (through its conmon)."""
        await resize_conmon_terminal(bundle, rows, cols)


def _write_resources(resources: dict[str, Any], container_id: str) -> Path:
    fd, name = tempfile.mkstemp(prefix=f"update-{container_id[:12]}-", suffix=".json")
    with os.fdopen(fd, "w") as fh:
        json.dump(resources, fh)
    return Path(name)


R = TypeVar("R", bound=CLIRuntime)


def runtime_from_config(
    cls: Callable[..., R],  # a subclass: (state_root, binary, *, name, extra_global_args)
    config: dict[str, Any],
    *,
    plugin: str,
    name: str,
    extra_global_args: list[str] | None = None,
) -> R:
    """A runtime for the daemon ``config`` (``root``, ``run_root``, ``plugins.<plugin>.binary``),
    its state in ``<run_root>/runtimes/<name>``: what every CLI runtime plugin's glue does."""
    from engine.store.layout import Layout

    layout = Layout(Path(config["root"]), Path(config["run_root"]))
    section = (config.get("plugins") or {}).get(plugin) or {}
    return cls(
        layout.runtime_state_dir(name),
        str(section.get("binary", plugin)),
        name=name,
        extra_global_args=extra_global_args,
    )
