"""The same docker CLI commands against engine's Docker API and against a real dockerd
(Debian's docker.io, a private one: engine.testing.dockerd), side by side.

After ids, digests, sizes and ages are normalised, the exit codes and the messages of the
error cases must be the same, the tables (``ps -a``, ``images``, ``network ls``,
``volume ls``, ``system df``) must have the same headers and row shapes, and ``inspect``
must have every key dockerd's has, but those listed (with the reason) in ``KNOWN_MISSING``.
One dockerd serves the whole session; one engine and one htpasswd registry this module.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from engine.testing import dockerd as dockerd_support
from engine.testing.daemon import Daemon, require_binary
from engine.testing.registry import Registry, push_layout, registry_server

from .conftest import DOCKER_CLIENTS

USER, PASSWORD = "alice", "secret"
PRIVATE = "private/busybox"
DEBIAN_CLI = dockerd_support.DOCKER_CLI  # API 1.41 against both: the same fields asked for

# dockerd's inspect keys engine does not serve (depth 2), and why
KNOWN_MISSING = {
    "container": set(),
    "image": set(),
    "network": set(),
    "volume": set(),
}


@pytest.fixture(scope="module")
def private_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    from engine.testing import images as test_images

    require_binary("htpasswd")
    base = tmp_path_factory.mktemp("vs-registry")
    test_images.write_oci_layout(base / "layout", [test_images.busybox_image()])
    with registry_server(base, users={USER: PASSWORD}) as reg:
        push_layout(base / "layout", "latest", reg, f"{PRIVATE}:v1", creds=(USER, PASSWORD))
        yield reg


@attrs.define
class Side:
    """One daemon and the docker CLI configured for it (its own DOCKER_CONFIG)."""

    name: str
    host: str
    config_dir: Path

    def run(self, *args: str, input: str | None = None, binary: str = DOCKER_CLIENTS[0],
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "DOCKER_HOST": self.host, "DOCKER_CONFIG": str(self.config_dir),
               "DOCKER_CLI_HINTS": "false"}
        return subprocess.run([binary, *args], capture_output=True, text=True, env=env, timeout=timeout,
                              input=input)


@attrs.define
class Pair:
    engine: Side
    dockerd: Side
    registry: Registry
    daemon: Daemon

    def both(self, *args: str, **kwargs: Any) -> tuple[subprocess.CompletedProcess[str],
                                                      subprocess.CompletedProcess[str]]:
        return self.engine.run(*args, **kwargs), self.dockerd.run(*args, **kwargs)

    def setup(self, *args: str, **kwargs: Any) -> None:
        for side, result in zip((self.engine, self.dockerd), self.both(*args, **kwargs), strict=True):
            assert result.returncode == 0, f"{side.name}: docker {' '.join(args)}: {result.stderr}"


@pytest.fixture(scope="module")
def pair(dockerd: dockerd_support.Dockerd, private_registry: Registry,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    """An engine and the session's dockerd, each with the same scene: an exited container,
    a running one using a volume, a login to the private registry."""
    from engine.testing import images as test_images

    for binary in ("runc", "conmon"):
        require_binary(binary)
    base = tmp_path_factory.mktemp("vs")
    archive = base / "busybox.tar"
    test_images.write_docker_archive(archive, [test_images.busybox_image()])
    daemon = Daemon()
    socket = daemon.base / "docker.sock"
    daemon.extra_args = ["--docker-host", f"unix://{socket}", "--default-network", "none",
                         "--insecure-registry", private_registry.host]
    try:
        daemon.start()
        daemon.call("image.load", path=str(archive))
        (base / "engine-config").mkdir()
        (base / "dockerd-config").mkdir()
        pair = Pair(Side("engine", f"unix://{socket}", base / "engine-config"),
                    Side("dockerd", dockerd.host, base / "dockerd-config"), private_registry, daemon)
        pair.setup("run", "--name", "vs-exited", "busybox", "true")
        pair.setup("run", "-d", "--name", "vs-running", "-v", "vs-vol:/data", "busybox", "sleep", "600")
        pair.setup("login", "-u", USER, "--password-stdin", private_registry.host, input=PASSWORD)
        yield pair
    finally:
        daemon.cleanup()
        dockerd.remove_all()
        for args in (["volume", "rm", "-f", "vs-vol"], ["logout", private_registry.host]):
            dockerd.cli(*args)


# --- normalising -------------------------------------------------------------------------------

_PATTERNS = [
    (re.compile(r"sha256:[0-9a-f]{64}"), "sha256:<DIGEST>"),
    (re.compile(r"\b[0-9a-f]{64}\b"), "<ID>"),
    (re.compile(r"\b[0-9a-f]{12}\b"), "<SHORT>"),
    (re.compile(r"\b\d+(\.\d+)?\s?(B|kB|MB|GB)\b"), "<SIZE>"),
    (re.compile(r"\(\d+%\)"), "(<PCT>)"),
    (re.compile(r"\b(Less than a second|About a minute|About an hour|\d+ (seconds?|minutes?|hours?|days?|"
                r"weeks?|months?|years?))\b"), "<AGE>"),
]


def normalise(text: str, pair: Pair) -> str:
    text = text.replace(pair.registry.host, "<REGISTRY>")
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def rows(text: str) -> list[list[str]]:
    """A CLI table: its lines cut at runs of 2+ spaces (docker's column gaps)."""
    return [re.split(r" {2,}", line.strip()) for line in text.splitlines() if line.strip()]


# --- error cases -------------------------------------------------------------------------------

ERROR_CASES = [
    ("no such container (inspect)", ["inspect", "nosuch"]),
    ("no such container (rm)", ["rm", "nosuch"]),
    ("no such container (logs)", ["logs", "nosuch"]),
    ("no such container (start)", ["start", "nosuch"]),
    ("no such image (rmi)", ["rmi", "nosuch"]),
    ("bad image reference (run)", ["run", "--rm", "BAD:ref", "true"]),
    ("bad image reference (pull)", ["pull", "Bad/Ref"]),
    ("name conflict", ["run", "--name", "vs-exited", "busybox", "true"]),
    ("bad container name", ["run", "--name", "bad name", "busybox", "true"]),
    ("bad container name (dash)", ["create", "--name", "-x", "busybox", "true"]),
    ("bad new name (rename)", ["rename", "vs-exited", "bad/name"]),
    ("memory limit below 6MB", ["run", "--rm", "-m", "1m", "busybox", "true"]),
    ("more CPUs than the host has", ["run", "--rm", "--cpus", "999", "busybox", "true"]),
    ("update to more CPUs than the host has", ["update", "--cpus", "999", "vs-running"]),
    ("rm of a running container", ["rm", "vs-running"]),
    ("stop of a stopped container", ["stop", "vs-exited"]),
    ("kill of a stopped container", ["kill", "vs-exited"]),
    ("network rm of an unknown network", ["network", "rm", "nosuchnet"]),
    ("network rm of a predefined network", ["network", "rm", "none"]),
    ("network rm of the host network", ["network", "rm", "host"]),
    ("network create of a predefined name", ["network", "create", "none"]),
    ("network create of the host name", ["network", "create", "host"]),
    ("volume rm of a volume in use", ["volume", "rm", "vs-vol"]),
    ("volume rm of an unknown volume", ["volume", "rm", "nosuchvol"]),
    ("exec into a stopped container", ["exec", "vs-exited", "true"]),
    ("pull of a missing tag", ["pull", "<REGISTRY>/private/busybox:nosuchtag"]),
    ("login with a bad password", ["login", "-u", USER, "--password-stdin", "<REGISTRY>"]),
]


@pytest.mark.parametrize(("case", "args"), ERROR_CASES, ids=[c for c, _ in ERROR_CASES])
def test_error_cases_say_what_dockerd_says(pair: Pair, case: str, args: list[str]) -> None:
    args = [a.replace("<REGISTRY>", pair.registry.host) for a in args]
    given = "wrong-password" if case.startswith("login") else None
    ours, theirs = pair.both(*args, input=given)
    assert (ours.returncode, normalise(ours.stderr, pair), normalise(ours.stdout, pair)) == (
        theirs.returncode, normalise(theirs.stderr, pair), normalise(theirs.stdout, pair)), case


@pytest.mark.parametrize(("command", "code", "words"), [
    ("nosuchcmd", 127, 'exec: "nosuchcmd": executable file not found in $PATH'),
    ("/etc/passwd", 126, 'exec: "/etc/passwd": permission denied'),
])
def test_run_of_a_command_that_cannot_run(pair: Pair, command: str, code: int, words: str) -> None:
    """Exit codes 127/126 as dockerd's; the message is runc's in both (dockerd wraps it in
    containerd's words: "failed to create shim task: OCI runtime create failed: …: unknown")."""
    ours, theirs = pair.both("run", "--rm", "busybox", command)
    assert ours.returncode == theirs.returncode == code
    for result in (ours, theirs):
        lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
        assert lines[0].startswith("docker: Error response from daemon: ") and words in lines[0], result.stderr
        assert lines[1:] == ["Run 'docker run --help' for more information"]
    assert f"runc create failed: unable to start container process: {words}" in ours.stderr
    assert ours.stdout == theirs.stdout == ""


def test_image_inspect_of_a_missing_image(pair: Pair) -> None:
    """dockerd 20.10 repeats itself here ("no such image: nosuch: No such image:
    nosuch:latest"); engine says it once, as dockerd's rmi and newer dockerds do."""
    ours, theirs = pair.both("image", "inspect", "nosuch")
    assert ours.returncode == theirs.returncode == 1
    assert ours.stderr.strip() == "Error response from daemon: No such image: nosuch:latest"
    assert "No such image: nosuch:latest" in theirs.stderr


# --- tables --------------------------------------------------------------------------------------


@pytest.mark.parametrize("binary", [DOCKER_CLIENTS[0], DEBIAN_CLI])
def test_tables_have_dockerds_headers_and_rows(pair: Pair, binary: str) -> None:
    def table(*args: str) -> tuple[list[list[str]], list[list[str]]]:
        ours, theirs = pair.both(*args, binary=binary)
        assert ours.returncode == theirs.returncode == 0, (ours.stderr, theirs.stderr)
        return rows(normalise(ours.stdout, pair)), rows(normalise(theirs.stdout, pair))

    ours, theirs = table("ps", "-a", "--filter", "name=vs-")
    assert ours[0] == theirs[0] == ["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"]
    assert sorted(ours[1:]) == sorted(theirs[1:])  # same commands, states, names (ages normalised)

    ours, theirs = table("images", "busybox")
    assert ours == theirs  # REPOSITORY TAG IMAGE ID CREATED SIZE; the same image id

    ours, theirs = table("network", "ls")
    assert ours[0] == theirs[0] == ["NETWORK ID", "NAME", "DRIVER", "SCOPE"]
    assert {tuple(r) for r in theirs[1:]} <= {tuple(r) for r in ours[1:]}  # host, none (+ engine's bridge)

    ours, theirs = table("volume", "ls", "--filter", "name=vs-")
    assert ours == theirs == [["DRIVER", "VOLUME NAME"], ["local", "vs-vol"]]

    ours, theirs = table("system", "df")
    assert ours[0] == theirs[0] == ["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"]
    assert [r[0] for r in ours] == [r[0] for r in theirs]
    assert [len(r) for r in ours] == [len(r) for r in theirs]
    containers = next(r for r in ours if r[0] == "Containers")
    assert containers == next(r for r in theirs if r[0] == "Containers")


# --- inspect keys --------------------------------------------------------------------------------

OPEN_MAPS = {"Labels", "Options", "Containers", "Networks", "Volumes", "ExposedPorts", "Ports", "Data",
             "Config", "Status"}


def key_paths(doc: Any, prefix: str = "", depth: int = 2) -> set[str]:
    """``A`` and ``A.B`` for every key (maps keyed by user data are not gone into)."""
    out: set[str] = set()
    if isinstance(doc, dict):
        for key, value in doc.items():
            out.add(prefix + key)
            if depth > 1 and isinstance(value, dict) and (key not in OPEN_MAPS or not prefix and key == "Config"):
                out |= key_paths(value, prefix + key + ".", depth - 1)
    return out


def test_inspect_has_dockerds_keys(pair: Pair) -> None:
    pair.setup("network", "create", "vs-net")
    try:
        lacking: dict[str, list[str]] = {}
        for kind, name in (("container", "vs-running"), ("image", "busybox"), ("network", "vs-net"),
                           ("volume", "vs-vol")):
            ours, theirs = pair.both(kind, "inspect", name, binary=DEBIAN_CLI)
            assert ours.returncode == theirs.returncode == 0, (ours.stderr, theirs.stderr)
            missing = key_paths(json.loads(theirs.stdout)[0]) - key_paths(json.loads(ours.stdout)[0])
            if kind == "container":  # both daemons without a default network: networking disabled
                assert json.loads(ours.stdout)[0]["Config"].get("NetworkDisabled") is True, ours.stdout
                assert json.loads(theirs.stdout)[0]["Config"].get("NetworkDisabled") is True, theirs.stdout
            if missing - KNOWN_MISSING[kind]:
                lacking[kind] = sorted(missing - KNOWN_MISSING[kind])
        assert lacking == {}
    finally:
        pair.both("network", "rm", "vs-net")


def test_memory_without_memory_swap_gets_dockerds_swap_limit(pair: Pair) -> None:
    """``-m`` alone: twice the memory as the swap limit (dockerd's default where the kernel
    accounts swap), in inspect and in the cgroup; ``--memory-swap -1`` stays unlimited; an
    update above that limit is refused with dockerd's words."""
    mib = 1024 * 1024
    script = "cat /sys/fs/cgroup/memory/memory.memsw.limit_in_bytes"
    for extra, swap in (([], 128 * mib), (["--memory-swap", "-1"], -1)):
        pair.setup("create", "--name", "vs-mem", "-m", "64m", *extra, "busybox", "sh", "-c", script)
        try:
            views = [json.loads(r.stdout)[0]["HostConfig"] for r in pair.both("inspect", "vs-mem")]
            assert [(v["Memory"], v["MemorySwap"]) for v in views] == [(64 * mib, swap)] * 2, extra
            ours, theirs = pair.both("start", "-a", "vs-mem")
            assert ours.returncode == theirs.returncode == 0, (ours.stderr, theirs.stderr)
            limit = int(theirs.stdout)
            assert limit == (swap if swap > 0 else limit) and (swap > 0 or limit > 2**60)
            assert int(ours.stdout) == limit
        finally:
            pair.both("rm", "-f", "vs-mem")
    pair.setup("run", "-d", "--name", "vs-mem", "-m", "64m", "busybox", "sleep", "600")
    try:
        ours, theirs = pair.both("update", "-m", "256m", "vs-mem")
        assert ours.returncode == theirs.returncode == 1
        assert normalise(ours.stderr, pair) == normalise(theirs.stderr, pair)
    finally:
        pair.both("rm", "-f", "vs-mem")


def test_update_memory_swap_as_dockerd(pair: Pair) -> None:
    """``docker update --memory-swap``: the kept limits (inspect) after a new pair and a swap
    limit alone are dockerd's; a swap limit below the memory limit is refused in its words."""
    mib = 1024 * 1024
    pair.setup("run", "-d", "--name", "vs-swap", "-m", "32m", "busybox", "sleep", "600")
    try:
        def limits() -> list[tuple[int, int]]:
            views = [json.loads(r.stdout)[0]["HostConfig"] for r in pair.both("inspect", "vs-swap")]
            return [(v["Memory"], v["MemorySwap"]) for v in views]

        pair.setup("update", "-m", "48m", "--memory-swap", "200m", "vs-swap")
        assert limits() == [(48 * mib, 200 * mib)] * 2
        pair.setup("update", "--memory-swap", "100m", "vs-swap")
        assert limits() == [(48 * mib, 100 * mib)] * 2
        ours, theirs = pair.both("update", "-m", "64m", "--memory-swap", "40m", "vs-swap")
        assert ours.returncode == theirs.returncode == 1
        assert normalise(ours.stderr, pair) == normalise(theirs.stderr, pair)
        ours, theirs = pair.both("update", "-m", "128m", "vs-swap")  # above the kept swap limit
        assert ours.returncode == theirs.returncode == 1
        assert normalise(ours.stderr, pair) == normalise(theirs.stderr, pair)
        # (-m over the kept swap limit with --memory-swap -1: dockerd's runc writes the memory
        # limit first and the kernel refuses it; engine's takes it)
        pair.setup("update", "-m", "64m", "--memory-swap", "-1", "vs-swap")
        assert limits() == [(64 * mib, -1)] * 2
    finally:
        pair.both("rm", "-f", "vs-swap")


def _put_archive_status(host: str, container: str, path: str, data: bytes) -> tuple[int, str]:
    """PUT /containers/{id}/archive straight to a daemon's socket: (status, message)."""
    import http.client
    import socket

    class UnixConnection(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.connect(host.removeprefix("unix://"))

    conn = UnixConnection("localhost", timeout=30)
    try:
        conn.request("PUT", f"/v1.41/containers/{container}/archive?path={path}", body=data,
                     headers={"Content-Type": "application/x-tar"})
        response = conn.getresponse()
        body = response.read()
        return response.status, json.loads(body)["message"] if body.strip() else ""
    finally:
        conn.close()


def test_cp_into_a_stopped_read_only_container(pair: Pair, tmp_path: Path) -> None:
    """A stopped ``--read-only`` container's layer is writable on the host, yet dockerd
    refuses a copy into its root (and into a read-only volume), status and words; into a
    writable volume or bind the copy goes."""
    import io
    import tarfile

    (tmp_path / "f.txt").write_text("hi\n")
    bind = tmp_path / "bind"
    bind.mkdir()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(tmp_path / "f.txt", "f.txt")
    pair.setup("create", "--name", "vs-ro", "--read-only", "-v", "vs-ro-vol:/vol", "-v", "vs-ro-rovol:/rovol:ro",
               "-v", f"{bind}:/bind", "busybox", "true")
    try:
        for dest in ("/", "/etc/f.txt", "/rovol/"):
            ours, theirs = pair.both("cp", str(tmp_path / "f.txt"), f"vs-ro:{dest}")
            assert (ours.returncode, ours.stderr) == (theirs.returncode, theirs.stderr), dest
            assert ours.returncode == 1, ours.stderr
        for dest in ("/", "/rovol"):
            statuses = [_put_archive_status(side.host, "vs-ro", dest, buf.getvalue())
                        for side in (pair.engine, pair.dockerd)]
            assert statuses[0] == statuses[1], (dest, statuses)
        for dest in ("/vol/", "/bind/g.txt"):
            ours, theirs = pair.both("cp", str(tmp_path / "f.txt"), f"vs-ro:{dest}")
            assert ours.returncode == theirs.returncode == 0, (dest, ours.stderr, theirs.stderr)
        assert (bind / "g.txt").read_text() == "hi\n"
    finally:
        pair.both("rm", "-f", "vs-ro")
        pair.both("volume", "rm", "vs-ro-vol", "vs-ro-rovol")


def test_network_mode_and_networks_as_dockerd_shows_them(pair: Pair) -> None:
    """Both daemons without a default network (dockerd's bridge none, engine's
    --default-network none): a container created without --network shows NetworkMode
    "default" and dockerd's networks; --network none and host show theirs; `network ls`
    lists the same networks."""
    cases = {"vs-net-default": [], "vs-net-none": ["--network", "none"], "vs-net-host": ["--network", "host"]}
    try:
        for name, extra in cases.items():
            pair.setup("create", "--name", name, *extra, "busybox", "sleep", "600")
            views = []
            for result in pair.both("inspect", name, binary=DEBIAN_CLI):
                doc = json.loads(result.stdout)[0]
                views.append((doc["HostConfig"]["NetworkMode"], sorted(doc["NetworkSettings"]["Networks"]),
                              bool(doc["Config"].get("NetworkDisabled"))))
            assert views[0] == views[1], (name, views)
        for name in cases:  # and while they run (engine's namespace details are not networks)
            pair.setup("start", name)
            ours, theirs = pair.both("ps", "-a", "--filter", f"name={name}", "--format", "{{.Networks}}")
            assert ours.stdout == theirs.stdout, (name, ours.stdout, theirs.stdout)
        ours, theirs = pair.both("network", "ls", "--format", "{{.Name}} {{.Driver}} {{.Scope}}")
        assert sorted(ours.stdout.split("\n")) == sorted(theirs.stdout.split("\n"))
    finally:
        pair.both("rm", "-f", *cases)


def test_cp_into_a_missing_directory(pair: Pair, tmp_path: Path) -> None:
    """`docker cp FILE CTR:/nosuchdir/x` fails as dockerd's does (the CLI sends the archive
    to /nosuchdir, which dockerd does not create); PUT …/archive into a missing path or a
    non-directory gets dockerd's status and words."""
    import io
    import tarfile

    (tmp_path / "f.txt").write_text("hi\n")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(tmp_path / "f.txt", "x")
    for binary in (DOCKER_CLIENTS[0], DEBIAN_CLI):
        ours, theirs = pair.both("cp", str(tmp_path / "f.txt"), "vs-running:/nosuchdir/x", binary=binary)
        assert (ours.returncode, ours.stderr, ours.stdout) == (theirs.returncode, theirs.stderr, theirs.stdout), binary
        assert ours.returncode == 1 and "/nosuchdir" in ours.stderr, ours.stderr
    for dest in ("/nosuchdir", "/etc/passwd", "/etc/passwd/x"):
        statuses = [_put_archive_status(side.host, "vs-running", dest, buf.getvalue())
                    for side in (pair.engine, pair.dockerd)]
        if dest == "/etc/passwd/x":  # dockerd's words name its host path: the end only
            assert statuses[0] == (500, "lstat /etc/passwd/x: not a directory"), statuses
            assert statuses[1][0] == 500 and statuses[1][1].endswith("/etc/passwd/x: not a directory")
            continue
        assert statuses[0] == statuses[1], (dest, statuses)
    assert _put_archive_status(pair.engine.host, "vs-running", "/nosuchdir", buf.getvalue()) == (
        404, "Could not find the file /nosuchdir in container vs-running")
    ours, theirs = pair.both("exec", "vs-running", "ls", "/nosuchdir")
    assert ours.returncode == theirs.returncode == 1  # nothing was made there


def test_network_connect_of_a_none_mode_container(pair: Pair) -> None:
    """dockerd refuses to connect a `--network none` container (400, its words)."""
    pair.setup("network", "create", "vs-connect-net")
    pair.setup("run", "-d", "--name", "vs-none", "--network", "none", "busybox", "sleep", "600")
    try:
        ours, theirs = pair.both("network", "connect", "vs-connect-net", "vs-none")
        assert (ours.returncode, ours.stderr) == (theirs.returncode, theirs.stderr)
        assert ours.returncode == 1 and "private (none) mode" in ours.stderr, ours.stderr
    finally:
        pair.both("rm", "-f", "vs-none")
        pair.both("network", "rm", "vs-connect-net")


def test_run_with_an_empty_entrypoint(pair: Pair) -> None:
    """`--entrypoint ""` (the CLI sends [""]) drops the entrypoint: the command runs alone,
    and inspect shows dockerd's null entrypoint, Path and Args."""
    ours, theirs = pair.both("run", "--rm", "--entrypoint", "", "busybox", "echo", "x")
    assert (ours.returncode, ours.stdout, ours.stderr) == (theirs.returncode, theirs.stdout, theirs.stderr)
    assert ours.stdout == "x\n"
    pair.setup("create", "--name", "vs-entry", "--entrypoint", "", "busybox", "echo", "x")
    try:
        template = "{{json .Config.Entrypoint}} {{json .Config.Cmd}} {{.Path}} {{json .Args}}"
        ours, theirs = pair.both("inspect", "-f", template, "vs-entry")
        assert ours.stdout == theirs.stdout == 'null ["echo","x"] echo ["x"]\n', (ours.stdout, theirs.stdout)
    finally:
        pair.both("rm", "-f", "vs-entry")


def test_ps_command_quotes_arguments_with_spaces(pair: Pair) -> None:
    """`docker ps`'s COMMAND: an argument with a space in single quotes, as dockerd's list."""
    pair.setup("create", "--name", "vs-cmd", "busybox", "sh", "-c", "echo out; exit 3")
    try:
        ours, theirs = pair.both("ps", "-a", "--no-trunc", "--filter", "name=vs-cmd", "--format", "{{.Command}}")
        assert ours.stdout == theirs.stdout == "\"sh -c 'echo out; exit 3'\"\n", (ours.stdout, theirs.stdout)
    finally:
        pair.both("rm", "-f", "vs-cmd")


def test_images_of_a_repository_list_its_tags_only(pair: Pair) -> None:
    """`docker images REPO` and `--filter reference=…` show the matching tags of an image,
    not its other names (dockerd narrows RepoTags to the filter)."""
    pair.setup("tag", "busybox", "vs-repo/bb:1")
    pair.setup("tag", "busybox", "vs-repo/bb:2")
    try:
        for args in (["vs-repo/bb"], ["--filter", "reference=vs-repo/*"], ["vs-repo/bb:2"],
                     ["--filter", "reference=docker.io/vs-repo/bb:1"], ["busybox"]):
            ours, theirs = pair.both("images", *args, "--format", "{{.Repository}}:{{.Tag}}")
            assert ours.returncode == theirs.returncode == 0, (ours.stderr, theirs.stderr)
            assert sorted(ours.stdout.split()) == sorted(theirs.stdout.split()), (args, ours.stdout, theirs.stdout)
        assert sorted(ours.stdout.split()) == ["busybox:latest"]
    finally:
        pair.both("rmi", "vs-repo/bb:1", "vs-repo/bb:2")


def test_pause_unpause_top_rename_refusals_say_what_dockerd_says(pair: Pair) -> None:
    """The refusals a user meets with pause, unpause, top and rename: dockerd's words and
    exit codes (ids normalised)."""
    pair.setup("run", "-d", "--name", "vs-pause", "busybox", "sleep", "600")
    try:
        pair.setup("pause", "vs-pause")
        cases = [["pause", "vs-pause"], ["unpause", "vs-running"], ["pause", "vs-exited"],
                 ["unpause", "vs-exited"], ["top", "vs-exited"], ["rename", "vs-exited", "vs-exited"],
                 ["rename", "vs-exited", "vs-running"], ["rename", "nosuch", "x"]]
        for args in cases:
            ours, theirs = pair.both(*args)
            assert (ours.returncode, normalise(ours.stderr, pair), ours.stdout) == (
                theirs.returncode, normalise(theirs.stderr, pair), theirs.stdout), args
            assert ours.returncode == 1, args
        ours, theirs = pair.both("top", "vs-pause")  # a paused container's processes are listed
        assert ours.returncode == theirs.returncode == 0, (ours.stderr, theirs.stderr)
        assert [r[-1] for r in rows(ours.stdout)] == [r[-1] for r in rows(theirs.stdout)] == ["CMD", "sleep 600"]
    finally:
        pair.both("rm", "-f", "vs-pause")


def test_run_with_a_missing_network_or_an_unset_variable(pair: Pair) -> None:
    """`run --network nosuchnet` (or --volumes-from / --network container: a missing
    container) fails with dockerd's words and no pull attempt (a 404 from create makes the
    CLI pull the image); `-e NAME` of a variable the client has not set
    runs without it, as dockerd."""
    ours, theirs = pair.both("run", "--rm", "--network", "vs-nosuchnet", "busybox", "true", timeout=60)
    assert (ours.returncode, ours.stderr) == (theirs.returncode, theirs.stderr)
    assert ours.returncode == 125 and "network vs-nosuchnet not found" in ours.stderr, ours.stderr
    for args in (["--volumes-from", "vs-nosuch"], ["--network", "container:vs-nosuch"]):
        ours, theirs = pair.both("run", "--rm", *args, "busybox", "true", timeout=60)
        assert (ours.returncode, ours.stderr) == (theirs.returncode, theirs.stderr), args
        assert "No such container: vs-nosuch" in ours.stderr and "Unable to find image" not in ours.stderr
    env = {k: v for k, v in os.environ.items() if k != "VS_UNSET"}
    results = [subprocess.run([DOCKER_CLIENTS[0], "run", "--rm", "-e", "VS_UNSET", "-e", "VS_SET=1", "busybox",
                               "sh", "-c", "echo [${VS_UNSET-unset}] $VS_SET"], capture_output=True, text=True,
                              timeout=120, env={**env, "DOCKER_HOST": side.host, "DOCKER_CONFIG": str(side.config_dir)})
               for side in (pair.engine, pair.dockerd)]
    assert [(r.returncode, r.stdout) for r in results] == [(0, "[unset] 1\n")] * 2, [r.stderr for r in results]


def test_prune_filters_as_dockerd(pair: Pair) -> None:
    """`container/image/network/system prune --filter until=24h` (a duration: the CLI sends
    it as it is) and `label`/`label!` filters: taken, and pruning what dockerd prunes."""
    pair.setup("create", "--name", "vs-prune-a", "--label", "vs-prune=1", "busybox", "true")
    pair.setup("create", "--name", "vs-prune-b", "busybox", "true")
    pair.setup("network", "create", "--label", "vs-prune=1", "vs-prune-net")
    try:
        for args in (["container", "prune", "-f", "--filter", "until=1h"],
                     ["image", "prune", "-a", "-f", "--filter", "until=24h"],
                     ["image", "prune", "-f", "--filter", "label=vs-none"],
                     ["network", "prune", "-f", "--filter", "until=1h"],
                     ["system", "prune", "-f", "--filter", "until=1h"],
                     ["container", "prune", "-f", "--filter", "label=vs-prune=1"],
                     ["network", "prune", "-f", "--filter", "label!=vs-other"]):
            ours, theirs = pair.both(*args)
            assert (ours.returncode, normalise(ours.stdout, pair), ours.stderr) == (
                theirs.returncode, normalise(theirs.stdout, pair), theirs.stderr), args
            assert ours.returncode == 0, (args, ours.stderr)
        ours, theirs = pair.both("ps", "-a", "--filter", "name=vs-prune", "--format", "{{.Names}}")
        assert ours.stdout == theirs.stdout == "vs-prune-b\n"
        ours, theirs = pair.both("network", "ls", "--filter", "name=vs-prune", "-q")
        assert ours.stdout == theirs.stdout == ""
    finally:
        pair.both("rm", "-f", "vs-prune-a", "vs-prune-b")
        pair.both("network", "rm", "vs-prune-net")


def test_ps_filters_as_dockerd(pair: Pair) -> None:
    """`docker ps --filter` keys scripts use beyond name/label/status (network, volume,
    before, since, publish, expose, is-task) select what dockerd's do; an unknown key or
    status is refused in its words."""
    pair.setup("create", "--name", "vs-ps-net", "--network", "none", "busybox", "true")
    try:
        for value in ("network=none", "volume=vs-vol", "volume=/data", "before=vs-running", "since=vs-running",
                      "since=vs-exited", "is-task=false", "is-task=true", "publish=80", "expose=1-65535",
                      "status=bogus", "bogus=1"):
            ours, theirs = pair.both("ps", "-a", "--filter", value, "--filter", "name=vs-", "--format", "{{.Names}}")
            assert (ours.returncode, sorted(ours.stdout.split()), normalise(ours.stderr, pair)) == (
                theirs.returncode, sorted(theirs.stdout.split()), normalise(theirs.stderr, pair)), value
        ours, theirs = pair.both("ps", "-a", "--filter", "volume=vs-vol", "--format", "{{.Names}}")
        assert ours.stdout == theirs.stdout == "vs-running\n"
        # before a missing container: dockerd's 500 "no such container x"; engine's 404, its words
        ours, theirs = pair.both("ps", "--filter", "before=vs-nosuch")
        assert ours.returncode == theirs.returncode == 1
        assert ours.stderr == "Error response from daemon: No such container: vs-nosuch\n", ours.stderr
    finally:
        pair.both("rm", "-f", "vs-ps-net")


def test_bind_of_a_missing_host_directory(pair: Pair, tmp_path: Path) -> None:
    """`-v /host/missing/dir:/x` makes the host directory (and its parents), as dockerd
    does; `--mount type=bind` of a missing source is refused by both."""
    results = {}
    for side in (pair.engine, pair.dockerd):
        source = tmp_path / side.name / "a" / "b"
        results[side.name] = side.run("run", "--rm", "-v", f"{source}:/x", "busybox", "sh", "-c", "touch /x/f && ls /x")
        assert results[side.name].returncode == 0, (side.name, results[side.name].stderr)
        assert source.is_dir() and (source / "f").exists()
        assert (source.stat().st_mode & 0o777, source.parent.stat().st_mode & 0o777) == (0o755, 0o755), side.name
    assert results["engine"].stdout == results["dockerd"].stdout == "f\n"
    ours, theirs = pair.both("run", "--rm", "--mount", f"type=bind,src={tmp_path}/nosuch,dst=/x", "busybox", "true")
    assert ours.returncode == theirs.returncode == 125
    assert "bind source path does not exist" in ours.stderr and not (tmp_path / "nosuch").exists()


def test_cp_of_a_missing_path_out_of_a_container(pair: Pair, tmp_path: Path) -> None:
    """`docker cp CTR:/nosuch DEST` (and to stdout) fails in dockerd's words."""
    for dest in (str(tmp_path / "out"), "-"):
        ours, theirs = pair.both("cp", "vs-running:/nosuch", dest)
        assert (ours.returncode, ours.stderr, ours.stdout) == (theirs.returncode, theirs.stderr, theirs.stdout), dest
        assert ours.stderr == "Error response from daemon: Could not find the file /nosuch in container vs-running\n"


def test_volume_inspect_without_labels_or_options(pair: Pair) -> None:
    """A volume made without labels or options shows dockerd's nulls (templates print
    them), and the given ones when there are."""
    pair.setup("volume", "create", "vs-plain")
    pair.setup("volume", "create", "--label", "a=b", "-o", "type=tmpfs", "-o", "device=tmpfs", "vs-labelled")
    try:
        for name in ("vs-plain", "vs-labelled", "vs-vol"):
            ours, theirs = pair.both("volume", "inspect", "-f", "{{json .Labels}} {{json .Options}}", name)
            assert ours.stdout == theirs.stdout, (name, ours.stdout, theirs.stdout)
        ours, theirs = pair.both("volume", "ls", "--filter", "name=vs-plain", "--format", "{{.Labels}}|")
        assert ours.stdout == theirs.stdout
    finally:
        pair.both("volume", "rm", "vs-plain", "vs-labelled")


def test_log_driver_none_and_log_options(pair: Pair) -> None:
    """`--log-driver none` runs (engine refused it) and its logs cannot be read, in dockerd's
    words; `--log-opt max-size=…` shows in inspect as dockerd's."""
    pair.setup("run", "-d", "--name", "vs-nolog", "--log-driver", "none", "busybox", "echo", "hi")
    pair.setup("run", "-d", "--name", "vs-logopt", "--log-opt", "max-size=1m", "--log-opt", "max-file=2",
               "busybox", "echo", "hi")
    try:
        pair.setup("wait", "vs-nolog")
        ours, theirs = pair.both("logs", "vs-nolog")
        assert (ours.returncode, ours.stdout, ours.stderr) == (theirs.returncode, theirs.stdout, theirs.stderr)
        assert "configured logging driver does not support reading" in ours.stderr
        for name in ("vs-nolog", "vs-logopt"):
            ours, theirs = pair.both("inspect", "-f", "{{.HostConfig.LogConfig.Type}} {{json .HostConfig.LogConfig.Config}}",
                                     name)
            assert ours.stdout == theirs.stdout, (name, ours.stdout, theirs.stdout)
        pair.setup("wait", "vs-logopt")
        ours, theirs = pair.both("logs", "vs-logopt")
        assert ours.stdout == theirs.stdout == "hi\n"
    finally:
        pair.both("rm", "-f", "vs-nolog", "vs-logopt")


def test_rmi_by_id_as_dockerd(pair: Pair) -> None:
    """`docker rmi ID`: refused for a running container's image even with -f (engine's
    -f untagged it), for a stopped container's or a several-repository image without -f;
    dockerd's words."""
    def image_id(side: Side, name: str) -> str:
        return side.run("images", "-q", name).stdout.split()[0]

    def rmi(*args: str) -> tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]:
        *flags, name = args
        return (pair.engine.run("rmi", *flags, image_id(pair.engine, name)),
                pair.dockerd.run("rmi", *flags, image_id(pair.dockerd, name)))

    def same(results: tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]) -> str:
        ours, theirs = results
        assert (ours.returncode, normalise(ours.stderr, pair), sorted(normalise(ours.stdout, pair).splitlines())) == (
            theirs.returncode, normalise(theirs.stderr, pair), sorted(normalise(theirs.stdout, pair).splitlines()))
        return normalise(ours.stderr, pair)

    assert "image is being used by running container" in same(rmi("busybox"))
    assert "(cannot be forced)" in same(rmi("-f", "busybox"))
    pair.setup("commit", "vs-exited", "vs-commit:1")
    try:
        pair.setup("create", "--name", "vs-commit-user", "vs-commit:1", "true")
        assert "image is being used by stopped container" in same(rmi("vs-commit:1"))
        pair.setup("rm", "vs-commit-user")
        pair.setup("tag", "vs-commit:1", "vs-other:1")
        assert "image is referenced in multiple repositories" in same(rmi("vs-commit:1"))
        same(rmi("-f", "vs-commit:1"))
    finally:
        pair.both("rm", "-f", "vs-commit-user")
        pair.both("rmi", "-f", "vs-commit:1", "vs-other:1")
    ours, theirs = pair.both("images", "busybox", "-q")
    assert ours.stdout.strip() and theirs.stdout.strip()  # still named


def test_unknown_user_in_dockerds_words(pair: Pair) -> None:
    """`run -u nosuch`, `run -u 0:nosuch` and `exec -u nosuch`: dockerd's words and exit
    codes (the exec's on stdout, as dockerd 20.10 writes it into the exec's stream)."""
    for user in ("vs-nosuch", "0:vs-nosuch"):
        ours, theirs = pair.both("run", "--rm", "-u", user, "busybox", "true")
        assert (ours.returncode, ours.stderr) == (theirs.returncode, theirs.stderr), user
        assert ours.returncode == 125 and "no matching entries in" in ours.stderr
    ours, theirs = pair.both("exec", "-u", "vs-nosuch", "vs-running", "true")
    assert ours.returncode == theirs.returncode == 126
    assert (ours.stdout, ours.stderr) == (theirs.stdout, theirs.stderr) == (
        "unable to find user vs-nosuch: no matching entries in passwd file\n", "")


def test_run_rm_leaves_no_anonymous_volume_listed(pair: Pair) -> None:
    """`run --rm -v /data` (and --mount without a source): the next `volume ls` lists no
    anonymous volume, as dockerd's (engine removed it just after answering)."""
    for side in (pair.engine, pair.dockerd):
        before = set(side.run("volume", "ls", "-q").stdout.split())
        for args in (["-v", "/data"], ["--mount", "type=volume,dst=/data"]):
            for _ in range(3):
                assert side.run("run", "--rm", *args, "busybox", "true").returncode == 0
                after = set(side.run("volume", "ls", "-q").stdout.split())  # at once
                assert after == before, (side.name, args, after - before)


def test_expose_adds_to_the_images_exposed_ports(pair: Pair) -> None:
    """`--expose` (a port, a range, a protocol) lands in Config.ExposedPorts as dockerd's
    does (-P, which publishes them, is shown in test_docker_cli: this pair has no bridge)."""
    pair.setup("create", "--name", "vs-expose", "--expose", "81", "--expose", "5000-5001/udp",
               "--expose", "82/tcp", "-P", "busybox", "true")
    try:
        ours, theirs = pair.both("inspect", "-f", "{{json .Config.ExposedPorts}} {{.HostConfig.PublishAllPorts}}",
                                 "vs-expose")
        assert ours.stdout == theirs.stdout, (ours.stdout, theirs.stdout)
        assert ours.stdout == '{"5000/udp":{},"5001/udp":{},"81/tcp":{},"82/tcp":{}} true\n', ours.stdout
    finally:
        pair.both("rm", "-f", "vs-expose")


def test_healthcheck_in_inspect_and_kept_by_commit(pair: Pair) -> None:
    """The container's check shows in Config.Healthcheck as dockerd's (nanoseconds, zero
    times left out), and `commit` records it in the new image."""
    pair.setup("create", "--name", "vs-health", "--health-cmd", "test -e /tmp", "--health-interval", "5s",
               "--health-retries", "2", "busybox", "sleep", "5")
    try:
        ours, theirs = pair.both("inspect", "-f", "{{json .Config.Healthcheck}}", "vs-health")
        assert ours.stdout == theirs.stdout == '{"Test":["CMD-SHELL","test -e /tmp"],"Interval":5000000000,"Retries":2}\n', (
            ours.stdout, theirs.stdout)
        pair.setup("commit", "vs-health", "vs-health-image:1")
        ours, theirs = pair.both("image", "inspect", "-f", "{{json .Config.Healthcheck}}", "vs-health-image:1")
        assert ours.stdout == theirs.stdout == '{"Test":["CMD-SHELL","test -e /tmp"],"Interval":5000000000,"Retries":2}\n', (
            ours.stdout, theirs.stdout)
        pair.setup("create", "--name", "vs-no-health", "busybox", "true")
        ours, theirs = pair.both("inspect", "-f", "{{json .Config.Healthcheck}}", "vs-no-health")
        assert ours.stdout == theirs.stdout == "null\n", (ours.stdout, theirs.stdout)
    finally:
        pair.both("rm", "-f", "vs-health", "vs-no-health")
        pair.both("rmi", "vs-health-image:1")


def test_domainname_as_dockerd_sets_it(pair: Pair) -> None:
    """`--domainname`: the kernel's domain name in the container's UTS namespace, shown by
    inspect; on a user network the own /etc/hosts line names hostname.domain first, so
    `hostname -d` answers the domain. Under `--network host` the container still has its own
    UTS namespace (dockerd's too), so the host's domain name is left alone."""
    ours, theirs = pair.both("run", "--rm", "--domainname", "example.com", "-h", "web", "busybox",
                             "cat", "/proc/sys/kernel/domainname", "/etc/hostname")
    assert ours.stdout == theirs.stdout == "example.com\nweb\n", (ours.stdout, ours.stderr, theirs.stdout)
    pair.setup("network", "create", "--subnet", "10.231.7.0/24", "vs-domain-net")
    try:
        ours, theirs = pair.both("run", "--rm", "--network", "vs-domain-net", "--domainname", "example.com",
                                 "-h", "web", "busybox", "hostname", "-d")
        assert ours.stdout == theirs.stdout == "example.com\n", (ours.stdout, ours.stderr, theirs.stdout)
    finally:
        pair.both("network", "rm", "vs-domain-net")
    host_domain = Path("/proc/sys/kernel/domainname").read_text()
    ours, theirs = pair.both("run", "--rm", "--network", "host", "--domainname", "example.com", "busybox",
                             "cat", "/proc/sys/kernel/domainname")
    assert ours.stdout == theirs.stdout == "example.com\n", (ours.stdout, ours.stderr, theirs.stdout)
    assert Path("/proc/sys/kernel/domainname").read_text() == host_domain
    pair.setup("create", "--name", "vs-domain", "--domainname", "example.com", "busybox", "true")
    try:
        ours, theirs = pair.both("inspect", "-f", "{{.Config.Domainname}}", "vs-domain")
        assert ours.stdout == theirs.stdout == "example.com\n"
    finally:
        pair.both("rm", "vs-domain")


def test_dns_options_in_resolv_conf_as_dockerd_writes_them(pair: Pair) -> None:
    """`--dns-option` lands on resolv.conf's options line, off and on a user network (where
    ndots:0 is added unless an ndots is given), and in HostConfig.DnsOptions."""
    script = "grep ^options /etc/resolv.conf"
    ours, theirs = pair.both("run", "--rm", "--dns-option", "timeout:1", "--dns-option", "attempts:2",
                             "busybox", "sh", "-c", script)
    assert ours.stdout == theirs.stdout == "options timeout:1 attempts:2\n", (ours.stdout, theirs.stdout)
    pair.setup("network", "create", "--subnet", "10.231.8.0/24", "vs-dnsopt-net")
    try:
        for options in (["timeout:1"], ["ndots:3", "timeout:1"]):
            flags = [arg for option in options for arg in ("--dns-option", option)]
            ours, theirs = pair.both("run", "--rm", "--network", "vs-dnsopt-net", *flags, "busybox", "sh", "-c", script)
            assert ours.stdout == theirs.stdout, (options, ours.stdout, ours.stderr, theirs.stdout)
        assert ours.stdout == "options ndots:3 timeout:1\n"
    finally:
        pair.both("network", "rm", "vs-dnsopt-net")
    pair.setup("create", "--name", "vs-dnsopt", "--dns-opt", "rotate", "busybox", "true")
    try:
        ours, theirs = pair.both("inspect", "-f", "{{json .HostConfig.DnsOptions}}", "vs-dnsopt")
        assert ours.stdout == theirs.stdout == '["rotate"]\n'
    finally:
        pair.both("rm", "vs-dnsopt")


def test_memory_reservation_and_oom_kill_disable_as_dockerd(pair: Pair) -> None:
    """`--memory-reservation` is the cgroup's soft limit and `--oom-kill-disable` its
    oom_control (cgroup v1 here), shown by inspect; dockerd's refusals in its words."""
    script = ("cat /sys/fs/cgroup/memory/memory.soft_limit_in_bytes; "
              "grep oom_kill_disable /sys/fs/cgroup/memory/memory.oom_control")
    ours, theirs = pair.both("run", "--rm", "-m", "128m", "--memory-reservation", "64m", "--oom-kill-disable",
                             "busybox", "sh", "-c", script)
    assert ours.stdout == theirs.stdout == f"{64 << 20}\noom_kill_disable 1\n", (ours.stdout, ours.stderr,
                                                                                theirs.stdout)
    for args in (["--memory-reservation", "1m"], ["-m", "64m", "--memory-reservation", "128m"]):
        ours, theirs = pair.both("run", "--rm", *args, "busybox", "true")
        assert (ours.returncode, ours.stderr) == (theirs.returncode, theirs.stderr), (args, ours.stderr, theirs.stderr)
    pair.setup("create", "--name", "vs-soft", "--memory-reservation", "32m", "--oom-kill-disable", "busybox", "true")
    try:
        ours, theirs = pair.both("inspect", "-f", "{{.HostConfig.MemoryReservation}} {{.HostConfig.OomKillDisable}}",
                                 "vs-soft")
        assert ours.stdout == theirs.stdout == f"{32 << 20} true\n", (ours.stdout, theirs.stdout)
    finally:
        pair.both("rm", "vs-soft")
