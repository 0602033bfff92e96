"""``docker build`` (the classic builder's ``POST /build``) against engine: both docker CLIs,
docker-py, docker-compose 1.29, a raw hostile context, and one build side by side with a
private dockerd. Every RUN runs in a real container (runc, overlay); after each build no
container, mount or intermediate image of it is left."""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import socket
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

from engine.testing import dockerd as dockerd_support
from engine.testing.daemon import mounts_under

from .conftest import BUSYBOX_REPO, DOCKER_CLIENTS, Engine, EngineFactory, docker_clients

DOCKERFILE = """\
# the everyday instructions
ARG BASE=busybox
FROM $BASE
ARG GREETING=hello
ENV NAME=world \\
    SPACED="a b"
WORKDIR /app
COPY data ./data/
COPY top.txt .
RUN echo "$GREETING $NAME" > /app/made.txt && ls /app
USER nobody
EXPOSE 8080 9000/udp
LABEL org.example.kind=test
CMD ["sh", "-c", "cat /app/made.txt /app/data/a.txt /app/top.txt; id -u; pwd"]
"""


@pytest.fixture
def engine(make_engine: EngineFactory, busybox_archive: Path) -> Engine:
    return make_engine(load_busybox=busybox_archive)


def write_context(path: Path, dockerfile: str = DOCKERFILE) -> Path:
    (path / "data" / "deep").mkdir(parents=True)
    (path / "data" / "a.txt").write_text("from-data\n")
    (path / "data" / "deep" / "b.txt").write_text("deep\n")
    (path / "top.txt").write_text("from-top\n")
    (path / "ignored.log").write_text("never copied\n")
    (path / ".dockerignore").write_text("*.log\n")
    (path / "Dockerfile").write_text(dockerfile)
    return path


def image_ids(engine: Engine) -> set[str]:
    return {i["Id"] for i in engine.daemon.call("image.list", all=True)}


def leftovers(engine: Engine) -> tuple[list[str], list[str]]:
    """(containers, mounts of containers) the engine still has."""
    containers = engine.docker("ps", "-aq").stdout.split()
    mounts = [m for m in mounts_under(engine.daemon.base) if "/containers/" in m or "/merged" in m]
    return containers, mounts


@pytest.mark.parametrize("binary", docker_clients())
def test_docker_cli_builds_and_runs(engine: Engine, binary: str, tmp_path: Path) -> None:
    context = write_context(tmp_path / "ctx")
    before = image_ids(engine)
    built = engine.docker("build", "-t", "built:v1", "-t", "built:also", str(context), binary=binary, timeout=120)
    out = built.stdout
    assert "Step 1/12 : ARG BASE=busybox" in out and "Step 12/12 : CMD" in out
    assert re.search(r"Step 8/12 : RUN .*\n ---> Running in [0-9a-f]{12}\n"
                     r"data\nmade.txt\ntop.txt\nRemoving intermediate container [0-9a-f]{12}\n ---> [0-9a-f]{12}\n", out), out
    short = re.search(r"Successfully built ([0-9a-f]{12})\n", out)
    assert short, out
    assert "Successfully tagged built:v1\nSuccessfully tagged built:also\n" in out

    ran = engine.docker("run", "--rm", "built:v1", binary=binary)
    assert ran.stdout == "hello world\nfrom-data\nfrom-top\n65534\n/app\n"
    listing = engine.docker("run", "--rm", "built:v1", "sh", "-c", "ls -A /app /app/data; stat -c %u:%g /app/made.txt",
                            binary=binary)
    assert listing.stdout == "/app:\ndata\nmade.txt\ntop.txt\n\n/app/data:\na.txt\ndeep\n0:0\n"

    config = json.loads(engine.docker("inspect", "built:v1", binary=binary).stdout)[0]["Config"]
    assert config["Env"] == ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                             "NAME=world", "SPACED=a b"]  # ARGs are not kept in the image
    assert config["WorkingDir"] == "/app" and config["User"] == "nobody"
    assert config["ExposedPorts"] == {"8080/tcp": {}, "9000/udp": {}}
    assert config["Labels"] == {"org.example.kind": "test"}
    assert config["Cmd"][:2] == ["sh", "-c"] and config["Entrypoint"] is None
    history = [h["CreatedBy"] for h in engine.daemon.call("image.history", id="built:v1")]
    assert any(h.startswith("|1 GREETING=hello /bin/sh -c echo") for h in history), history

    # only the result is new: every step's container and intermediate image is gone
    assert image_ids(engine) - before == {json.loads(engine.docker("inspect", "built:v1").stdout)[0]["Id"]}
    assert leftovers(engine) == ([], [])


@pytest.mark.parametrize("binary", docker_clients())
def test_failing_run_reports_dockerds_words_and_leaves_nothing(engine: Engine, binary: str, tmp_path: Path) -> None:
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text("FROM busybox\nRUN echo partial > /f\nRUN echo some output; exit 3\nCMD true\n")
    before = image_ids(engine)
    failed = engine.docker("build", "-t", "never", str(context), binary=binary, check=False, timeout=120)
    assert failed.returncode == 3, failed  # the step's code, as with dockerd
    assert "some output\n" in failed.stdout
    assert "The command '/bin/sh -c echo some output; exit 3' returned a non-zero code: 3" in failed.stderr
    assert "Step 4/4" not in failed.stdout
    assert image_ids(engine) == before  # no intermediate image, no layer of the failed build
    assert leftovers(engine) == ([], [])
    assert engine.docker("images", "-q", "never").stdout == ""


def test_parse_error_is_an_http_error(engine: Engine, tmp_path: Path) -> None:
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text("FROM busybox\n\nBOGUS thing\n")
    failed = engine.docker("build", str(context), check=False)
    assert failed.returncode == 1
    assert "Error response from daemon: dockerfile parse error line 3: unknown instruction: BOGUS" in failed.stderr


def post_build(engine: Engine, body: bytes, query: str = "") -> tuple[int, bytes]:
    class UnixConnection(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(60)
            self.sock.connect(str(engine.docker_socket))

    conn = UnixConnection("localhost")
    try:
        conn.request("POST", f"/v1.41/build{query}", body=body, headers={"Content-Type": "application/x-tar"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def tar_of(*members: tuple[str, bytes | None, str]) -> bytes:
    """(name, data, symlink target) members."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data, link in members:
            info = tarfile.TarInfo(name)
            if link:
                info.type, info.linkname = tarfile.SYMTYPE, link
                tar.addfile(info)
            else:
                assert data is not None
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize(("member", "words"), [
    (("../../escaped-by-build.txt", b"x", ""), "path traversal"),
    (("evil-link", None, "/etc"), "outside the build context"),
])
def test_hostile_context_is_refused(engine: Engine, member: tuple[str, bytes | None, str], words: str) -> None:
    before = image_ids(engine)
    status, body = post_build(engine, tar_of(("Dockerfile", b"FROM busybox\nCOPY . /x/\n", ""), member), "?t=evil")
    assert status == 400, body
    assert words in json.loads(body)["message"]
    assert image_ids(engine) == before
    assert leftovers(engine) == ([], [])
    written = [d for d, _, files in os.walk(engine.daemon.base) if "escaped-by-build.txt" in files]
    assert written == [] and not (engine.daemon.base.parent / "escaped-by-build.txt").exists()


def test_build_stream_shape_over_http(engine: Engine) -> None:
    status, body = post_build(engine, tar_of(("Dockerfile", b"FROM busybox\nENV A=1\n", "")), "?t=shape:1&q=0")
    assert status == 200
    lines = [json.loads(line) for line in body.splitlines()]
    assert lines[0] == {"stream": "Step 1/2 : FROM busybox\n"}
    aux = [line["aux"]["ID"] for line in lines if "aux" in line]
    assert len(aux) == 1 and aux[0].startswith("sha256:")
    assert lines[-2:] == [{"stream": f"Successfully built {aux[0][7:19]}\n"},
                          {"stream": "Successfully tagged shape:1\n"}]
    quiet_status, quiet = post_build(engine, tar_of(("Dockerfile", b"FROM busybox\nENV A=2\n", "")), "?q=1")
    assert quiet_status == 200
    assert [json.loads(line) for line in quiet.splitlines()][-1]["stream"].startswith("sha256:")


def test_multi_stage_copy_from_and_target(engine: Engine, tmp_path: Path) -> None:
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text(
        "FROM busybox AS maker\nRUN mkdir /out && echo made-in-stage > /out/thing\n"
        "FROM busybox\nRUN echo unused stage\n"
        "FROM scratch\nCOPY --from=busybox /bin/busybox /bin/busybox\n"
        "COPY --from=maker /out/thing /copied/\nCOPY --from=0 --chown=1:2 /out /byindex\n"
        'CMD ["/bin/busybox", "cat", "/copied/thing", "/byindex/thing"]\n')
    engine.docker("build", "-t", "multi", str(context), timeout=180)
    assert engine.docker("run", "--rm", "multi").stdout == "made-in-stage\nmade-in-stage\n"
    owner = engine.docker("run", "--rm", "multi", "/bin/busybox", "stat", "-c", "%u:%g", "/byindex/thing").stdout
    assert owner == "1:2\n"
    layers = json.loads(engine.docker("inspect", "multi").stdout)[0]["RootFS"]["Layers"]
    assert len(layers) == 3  # scratch + three COPYs; none of busybox's own layer
    target = engine.docker("build", "--target", "maker", "-t", "maker-only", str(context), timeout=120)
    assert "unused stage" not in target.stdout
    assert engine.docker("run", "--rm", "maker-only", "cat", "/out/thing").stdout == "made-in-stage\n"
    missing = engine.docker("build", "--target", "nope", str(context), check=False)
    assert missing.returncode != 0 and "failed to reach build target nope in Dockerfile" in missing.stderr
    assert leftovers(engine) == ([], [])


def test_from_pulls_a_missing_image(make_engine: EngineFactory, registry: Any, tmp_path: Path) -> None:
    engine = make_engine(registry=registry)
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text(f"FROM {registry.host}/{BUSYBOX_REPO}\nRUN echo pulled-base > /f\n")
    built = engine.docker("build", "-t", "frompull", str(context), timeout=180)
    assert "Successfully tagged frompull:latest" in built.stdout
    assert engine.docker("run", "--rm", "frompull", "cat", "/f").stdout == "pulled-base\n"


def test_docker_py_images_build(engine: Engine, tmp_path: Path) -> None:
    pytest.importorskip("docker", reason="docker-py is in the test extras (pip install -e .[test])")
    context = write_context(tmp_path / "ctx")
    client = engine.docker_py()
    try:
        image, logs = client.images.build(path=str(context), tag="pybuilt:1", buildargs={"GREETING": "hey"})
        assert "pybuilt:1" in image.tags
        text = "".join(chunk.get("stream", "") for chunk in logs)
        assert "Successfully tagged pybuilt:1" in text
        output = client.containers.run("pybuilt:1", remove=True)
        assert output.decode().startswith("hey world\nfrom-data\n")
    finally:
        client.close()
    assert leftovers(engine) == ([], [])


def test_docker_compose_build_then_up(engine: Engine, tmp_path: Path) -> None:
    from .test_compose import compose_runner

    project = tmp_path / "proj"
    (project / "app").mkdir(parents=True)
    (project / "app" / "Dockerfile").write_text("FROM busybox\nARG WHO\nRUN echo built-for-$WHO > /msg\n"
                                                'CMD ["sh", "-c", "cat /msg; sleep 300"]\n')
    (project / "docker-compose.yml").write_text(
        'version: "2.4"\nservices:\n  app:\n    build:\n      context: ./app\n      args: {WHO: compose}\n'
        "    image: composebuilt:latest\n    network_mode: none\n")
    run = compose_runner(engine, project, "bld")
    try:
        run("build")
        run("up", "-d")
        logs = ""
        for _ in range(50):
            logs = run("logs", "--no-color").stdout
            if "built-for-compose" in logs:
                break
            import time

            time.sleep(0.2)
        assert "built-for-compose" in logs
    finally:
        run("down", "--rmi", "all", check=False)
    assert engine.docker("ps", "-aq").stdout == ""


# --- side by side with dockerd --------------------------------------------------------------------

SMALL = "FROM busybox\nARG V=1\nENV A=$V\nWORKDIR /w\nCOPY f.txt .\nRUN cat f.txt && echo ran\nEXPOSE 80\nCMD [\"cat\", \"f.txt\"]\n"


def normalise(text: str) -> list[str]:
    text = re.sub(r"\b[0-9a-f]{12}\b", "<id>", text)
    return [line for line in text.splitlines() if not line.startswith("Sending build context")]


def test_same_lines_and_config_as_dockerd(engine: Engine, dockerd: dockerd_support.Dockerd,
                                           tmp_path: Path) -> None:
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text(SMALL)
    (context / "f.txt").write_text("file\n")
    ours = engine.docker("build", "-t", "side:1", str(context), binary=dockerd_support.DOCKER_CLI)
    theirs = dockerd.cli("build", "-t", "side:1", str(context))
    assert theirs.returncode == 0, theirs.stderr
    assert normalise(ours.stdout) == normalise(theirs.stdout)
    our_config = json.loads(engine.docker("inspect", "side:1", binary=dockerd_support.DOCKER_CLI).stdout)[0]["Config"]
    their_config = json.loads(dockerd.cli("inspect", "side:1").stdout)[0]["Config"]
    their_config["Image"] = our_config["Image"] = ""  # dockerd names the parent image here
    assert our_config == their_config
    dockerd.cli("rmi", "side:1")
    dockerd.cli("image", "prune", "-f")  # the session's dockerd: busybox keeps no child images


def test_add_archives_wildcards_ownership_and_config_instructions(engine: Engine, tmp_path: Path) -> None:
    context = tmp_path / "ctx"
    (context / "pkg").mkdir(parents=True)
    (context / "pkg" / "x.txt").write_text("in-archive\n")
    with tarfile.open(context / "pkg.tar.gz", "w:gz") as tar:
        tar.add(context / "pkg", arcname="pkg")
    (context / "a1.txt").write_text("a1\n")
    (context / "a2.txt").write_text("a2\n")
    (context / "Dockerfile").write_text(
        "FROM busybox\nADD pkg.tar.gz /opt/\nCOPY --chmod=700 a*.txt /w/\nCOPY --chown=nobody a1.txt /owned\n"
        'SHELL ["/bin/sh", "-ec"]\n'
        "RUN cat /opt/pkg/x.txt && stat -c '%a %n' /w/a1.txt /w/a2.txt && stat -c '%U:%G' /owned\n"
        "HEALTHCHECK --interval=5s --retries=2 CMD true\nENTRYPOINT [\"echo\"]\nVOLUME /data\n"
        "STOPSIGNAL SIGINT\nONBUILD RUN echo later\n")
    tar_body = io.BytesIO()
    with tarfile.open(fileobj=tar_body, mode="w", format=tarfile.USTAR_FORMAT) as tar:  # docker sniffs ustar
        for name in ("Dockerfile", "pkg.tar.gz", "a1.txt", "a2.txt"):
            tar.add(context / name, arcname=name)
    # the context as a tar on stdin (docker build -)
    built = subprocess.run([DOCKER_CLIENTS[0], "build", "--label", "l1=v1", "-t", "more", "-"], input=tar_body.getvalue(),
                           capture_output=True, env=engine.env(), timeout=120)
    assert built.returncode == 0, built.stderr
    out = built.stdout.decode()
    assert "in-archive\n700 /w/a1.txt\n700 /w/a2.txt\nnobody:nobody\n" in out
    assert "Step 12/12 : LABEL l1=v1\n" in out
    config = json.loads(engine.docker("inspect", "more").stdout)[0]["Config"]
    assert config["Entrypoint"] == ["echo"] and config["Cmd"] is None  # ENTRYPOINT drops busybox's CMD
    assert config["Healthcheck"] == {"Test": ["CMD-SHELL", "true"], "Interval": 5_000_000_000, "Retries": 2}
    assert config["Volumes"] == {"/data": {}} and config["StopSignal"] == "SIGINT"
    assert config["OnBuild"] == ["RUN echo later"] and config["Shell"] == ["/bin/sh", "-ec"]
    assert config["Labels"] == {"l1": "v1"}
    assert engine.docker("run", "--rm", "more", "hi").stdout == "hi\n"
    assert leftovers(engine) == ([], [])


def test_client_going_away_mid_run_leaves_nothing(engine: Engine) -> None:
    """The client closes the connection while a RUN runs: the build is cancelled, its
    container removed, no image of it kept."""
    import time

    before = image_ids(engine)
    body = tar_of(("Dockerfile", b"FROM busybox\nRUN echo started; sleep 60\n", ""))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    try:
        sock.connect(str(engine.docker_socket))
        sock.sendall(b"POST /v1.41/build HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-tar\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        seen = b""
        while b'{"stream":"started\\n"}' not in seen:  # the RUN's own output, not its step line
            chunk = sock.recv(65536)
            assert chunk, seen
            seen += chunk
        assert engine.docker("ps", "-q").stdout.strip()  # the RUN's container is running
    finally:
        sock.close()
    deadline = time.monotonic() + 30
    while leftovers(engine) != ([], []) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert leftovers(engine) == ([], [])
    assert image_ids(engine) == before


# --- the build cache ------------------------------------------------------------------------------

CACHED = """\
FROM busybox
ARG V=1
ENV A=$V
WORKDIR /w
COPY f.txt .
RUN cat f.txt && echo "ran $V" > /w/ran
COPY g.txt .
CMD ["cat", "f.txt"]
"""


def cache_context(path: Path, dockerfile: str = CACHED) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "Dockerfile").write_text(dockerfile)
    (path / "f.txt").write_text("file\n")
    (path / "g.txt").write_text("g\n")
    return path


def steps(output: str) -> list[tuple[str, bool]]:
    """Each step's instruction and whether it came from the cache (FROM: never)."""
    found = []
    for block in re.split(r"^Step \d+/\d+ : ", output, flags=re.M)[1:]:
        instruction, _, rest = block.partition("\n")
        found.append((instruction, rest.startswith(" ---> Using cache\n ---> ")))
    return found


def hits(output: str) -> list[bool]:
    return [hit for _, hit in steps(output)]


def creates_since(engine: Engine, since: float) -> list[str]:
    """The ids of the containers created since ``since`` (docker events)."""
    shown = engine.docker("events", "--since", f"{since:.3f}", "--until", f"{time.time() + 0.5:.3f}",
                          "--filter", "type=container", "--filter", "event=create", "--format", "{{.ID}}")
    return shown.stdout.split()


def listed_ids(engine: Engine) -> set[str]:
    shown = engine.docker("images", "--no-trunc", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}").stdout
    return {line.split()[1] for line in shown.splitlines()}


def image_id(engine: Engine, ref: str) -> str:
    return str(json.loads(engine.docker("inspect", ref).stdout)[0]["Id"])


def test_rebuild_is_all_cache_and_makes_no_container(engine: Engine, tmp_path: Path) -> None:
    context = cache_context(tmp_path / "ctx")
    first = engine.docker("build", "-t", "cached:1", str(context), timeout=120).stdout
    assert hits(first) == [False] * 8
    listed = listed_ids(engine)
    since = time.time()
    second = engine.docker("build", "-t", "cached:1", str(context), timeout=120).stdout
    assert hits(second) == [False] + [True] * 7, second  # FROM prints its id only, as dockerd
    assert "Running in" not in second and "Removing intermediate container" not in second
    assert creates_since(engine, since) == []
    assert re.search(r"Step 6/8 : RUN .*\n ---> Using cache\n ---> [0-9a-f]{12}\nStep 7/8", second), second
    assert re.search(r"Successfully built ([0-9a-f]{12})", first).group(1) == \
        re.search(r"Successfully built ([0-9a-f]{12})", second).group(1)  # type: ignore[union-attr]
    # the steps' images are kept but not listed, by the CLI or engctl's image.list
    assert listed_ids(engine) == listed == {image_id(engine, "busybox"), image_id(engine, "cached:1")}
    assert {i["Id"] for i in engine.daemon.call("image.list")} == listed
    assert "<none>" not in engine.docker("images").stdout
    assert engine.docker("run", "--rm", "cached:1", "cat", "/w/ran").stdout == "ran 1\n"
    assert leftovers(engine) == ([], [])


def test_what_misses_and_from_where(engine: Engine, tmp_path: Path) -> None:
    context = cache_context(tmp_path / "ctx")
    outputs: list[str] = []

    def build(*args: str) -> str:
        outputs.append(engine.docker("build", *args, str(context), timeout=120).stdout)
        return outputs[-1]

    build("-t", "miss:1")
    # a changed file that a COPY copies: that step and every later one miss
    (context / "f.txt").write_text("changed\n")
    changed = build("-t", "miss:1")
    assert hits(changed) == [False, True, True, True, False, False, False, False], changed
    # its mode too
    (context / "f.txt").chmod(0o600)
    assert hits(build())[4] is False
    # a build arg: from the first step that uses it (ARG's own line is the Dockerfile's)
    arg = build("--build-arg", "V=2")
    assert hits(arg) == [False, True, False, False, False, False, False, False], arg
    assert "Step 2/8 : ARG V=1\n ---> Using cache" in arg
    again = build("--build-arg", "V=2", "-t", "miss:2")
    assert hits(again) == [False] + [True] * 7
    assert engine.docker("run", "--rm", "miss:2", "cat", "/w/ran").stdout == "ran 2\n"
    # a file no step copies changes nothing
    (context / "other.txt").write_text("not copied\n")
    assert hits(build()) == [False] + [True] * 7
    # --no-cache: every step runs, and takes containers
    since = time.time()
    fresh = build("--no-cache", "-t", "miss:3")
    assert hits(fresh) == [False] * 8 and fresh.count("Running in") == 5, fresh
    assert len(creates_since(engine, since)) >= 5
    assert image_id(engine, "miss:3") != image_id(engine, "miss:2")
    # no step image is listed: only the results of the untagged builds show as <none>, as
    # with dockerd; image prune removes those and keeps the steps
    results = set(re.findall(r"Successfully built ([0-9a-f]{12})", "".join(outputs)))
    dangling = engine.docker("images", "-q", "--filter", "dangling=true").stdout.split()
    assert dangling and set(dangling) <= results, (dangling, results)
    engine.docker("image", "prune", "-f")
    assert engine.docker("images", "-q", "--filter", "dangling=true").stdout == ""
    # (the --no-cache steps are the newest: the cache takes them, as dockerd takes the newest child)
    assert hits(build()) == [False] + [True] * 7
    assert leftovers(engine) == ([], [])


MULTI = """\
FROM busybox AS base
RUN echo made > /made
COPY a.txt /a.txt
FROM busybox
COPY --from=base /made /made
COPY b.txt /b.txt
"""


def test_multi_stage_cache_per_stage_and_copy_from_by_content(engine: Engine, tmp_path: Path) -> None:
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text(MULTI)
    (context / "a.txt").write_text("a\n")
    (context / "b.txt").write_text("b\n")
    assert hits(engine.docker("build", "-t", "multi:1", str(context), timeout=120).stdout) == [False] * 6
    assert hits(engine.docker("build", "-t", "multi:1", str(context), timeout=120).stdout) == \
        [False, True, True, False, True, True]
    (context / "b.txt").write_text("b2\n")  # only the second stage's own COPY
    assert hits(engine.docker("build", str(context), timeout=120).stdout) == [False, True, True, False, True, False]
    # the first stage changes, but not the file COPY --from copies: keyed on that file, it
    # hits (as dockerd's); so does the next step, cached by the build before
    (context / "a.txt").write_text("a2\n")
    assert hits(engine.docker("build", str(context), timeout=120).stdout) == \
        [False, True, False, False, True, True]
    (context / "Dockerfile").write_text(MULTI.replace("echo made", "echo remade"))
    assert hits(engine.docker("build", str(context), timeout=120).stdout) == \
        [False, False, False, False, False, False]
    assert engine.docker("run", "--rm", "multi:1", "cat", "/made", "/b.txt").stdout == "made\nb\n"


@pytest.mark.parametrize("how", ["stop", "kill9"])
def test_cache_survives_a_daemon_restart(engine: Engine, tmp_path: Path, how: str) -> None:
    context = cache_context(tmp_path / "ctx")
    engine.docker("build", "-t", "kept:1", str(context), timeout=120)
    listed = listed_ids(engine)
    if how == "stop":
        engine.daemon.stop()
    else:
        engine.daemon.kill9()
    engine.daemon.start()
    assert listed_ids(engine) == listed  # still hidden
    since = time.time()
    rebuilt = engine.docker("build", "-t", "kept:1", str(context), timeout=120).stdout
    assert hits(rebuilt) == [False] + [True] * 7, rebuilt
    assert creates_since(engine, since) == []


def test_builder_prune_and_system_df(engine: Engine, tmp_path: Path) -> None:
    context = cache_context(tmp_path / "ctx", CACHED.replace(
        "RUN cat f.txt", "RUN head -c 3000000 /dev/zero > /w/big && cat f.txt"))
    engine.docker("build", "-t", "pruned:1", str(context), timeout=120)
    df = engine.docker("system", "df").stdout
    assert re.search(r"^Build Cache\s+\d+\s+\d+\s+\S+", df, re.M), df
    # the tag's steps are in use: a plain prune keeps them, the rebuild still hits
    kept = engine.docker("builder", "prune", "-f").stdout
    assert "Total reclaimed space: 0B" in kept, kept
    assert hits(engine.docker("build", "-t", "pruned:1", str(context), timeout=120).stdout)[5] is True
    # docker rmi leaves the cache (dockerd deletes the untagged parents: see docs/build.md)
    engine.docker("rmi", "pruned:1")
    assert "<none>" not in engine.docker("images").stdout
    df = engine.docker("system", "df", "--format", "{{.Type}} {{.Size}}").stdout
    cache_size = next(line.split(" ", 2)[2] for line in df.splitlines() if line.startswith("Build Cache"))
    assert re.fullmatch(r"[3-9](\.\d+)?MB", cache_size), df  # the RUN's 3 MB layer
    pruned = engine.docker("builder", "prune", "-f").stdout
    assert "Deleted build cache objects:" in pruned, pruned
    reclaimed = re.search(r"Total reclaimed space: (\S+)", pruned)
    assert reclaimed and re.fullmatch(r"[3-9](\.\d+)?MB", reclaimed.group(1)), pruned
    df = engine.docker("system", "df", "--format", "{{.Type}} {{.TotalCount}} {{.Size}}").stdout
    assert "Build Cache 0 0B" in df, df
    assert hits(engine.docker("build", str(context), timeout=120).stdout) == [False] * 8
    # -a: also the steps under a tagged image; the image itself stays whole
    engine.docker("build", "-t", "pruned:2", str(context), timeout=120)
    assert "Deleted build cache objects:" in engine.docker("builder", "prune", "-af").stdout
    assert hits(engine.docker("build", "-t", "pruned:2", str(context), timeout=120).stdout) == [False] * 8
    assert engine.docker("run", "--rm", "pruned:2", "wc", "-c", "/w/big").stdout.split()[0] == "3000000"
    # system prune -a removes the cache too
    engine.docker("rmi", "pruned:2")
    assert "Deleted build cache objects:" in engine.docker("system", "prune", "-af").stdout
    assert engine.daemon.call("system.df")["Summary"][3]["TotalCount"] == 0


def test_rebuilds_say_what_dockerds_say(engine: Engine, dockerd: dockerd_support.Dockerd,
                                        tmp_path: Path) -> None:
    """The same Dockerfiles built twice, then after changes, by both: the same lines (ids
    aside), ``Using cache`` where dockerd says it."""
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text(SMALL.replace("ARG V=1", "ARG V=1\nARG W") + "RUN echo w=$W\n")
    (context / "f.txt").write_text("file\n")
    multi = tmp_path / "multi"
    multi.mkdir()
    (multi / "Dockerfile").write_text(MULTI)
    (multi / "a.txt").write_text("a\n")
    (multi / "b.txt").write_text("b\n")

    def both(*args: str) -> None:
        ours = engine.docker("build", *args, binary=dockerd_support.DOCKER_CLI, timeout=120)
        theirs = dockerd.cli("build", *args, timeout=120)
        assert theirs.returncode == 0, theirs.stderr
        assert normalise(ours.stdout) == normalise(theirs.stdout)

    try:
        both("-t", "again:1", str(context))
        both("-t", "again:1", str(context))  # all from the cache
        both("-t", "again:1", "--build-arg", "W=2", str(context))  # W: its RUN only
        (context / "f.txt").write_text("changed\n")
        both("-t", "again:1", str(context))
        both("--no-cache", "-t", "again:1", str(context))
        both("-t", "again:2", str(multi))
        both("-t", "again:2", str(multi))
        (multi / "a.txt").write_text("a2\n")
        both("-t", "again:2", str(multi))
    finally:
        dockerd.cli("rmi", "again:1", "again:2")
        # the results the rebuilds untagged, with their steps: the session's dockerd is
        # shared, and a child image of busybox changes what its rmi says
        dockerd.cli("image", "prune", "-f")
