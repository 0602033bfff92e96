"""The docker CLI against engine's Docker API: what a user types, end to end.

Each test starts its own engined (``--docker-host unix://…``) and, where it pulls, a local
docker-registry; results are compared with what the engine's own RPC reports.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
import urllib.request

import pytest

from engine.testing.procs import wait_until

from .conftest import Engine, EngineFactory, docker_clients


@pytest.mark.parametrize("binary", docker_clients())
def test_version_and_info_negotiate_the_api(engine: Engine, binary: str) -> None:
    out = engine.docker("version", "--format", "{{json .}}", binary=binary).stdout
    version = json.loads(out)
    assert version["Server"]["ApiVersion"] == "1.47"
    assert version["Server"]["MinAPIVersion"] == "1.24"
    # docker 28 speaks 1.50: it negotiates down to ours; Debian's 20.10 speaks 1.41
    assert version["Client"]["ApiVersion"] in ("1.47", "1.41")
    info = json.loads(engine.docker("info", "--format", "{{json .}}", binary=binary).stdout)
    rpc = engine.daemon.call("system.info")
    assert info["Images"] == rpc["Images"] == 0
    assert info["Containers"] == rpc["Containers"] == 0
    assert info["Driver"] == rpc["StorageDriver"]
    assert info["DefaultRuntime"] == rpc["DefaultRuntime"]
    assert info["ServerVersion"] == rpc["Version"]


@pytest.mark.parametrize("binary", docker_clients())
def test_pull_run_logs_exec_stop_rm_rmi(engine: Engine, binary: str) -> None:
    ref = engine.image_ref()
    pulled = engine.docker("pull", ref, binary=binary, timeout=120)
    assert "Downloaded newer image" in pulled.stdout, pulled.stdout
    again = engine.docker("pull", ref, binary=binary, timeout=120)
    assert "Image is up to date" in again.stdout, again.stdout
    images = engine.docker("images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}", binary=binary).stdout
    rpc_image = engine.daemon.call("image.inspect", id=ref)
    assert f"{ref} {rpc_image['Id'].removeprefix('sha256:')[:12]}" in images.splitlines()

    cid = engine.docker("run", "-d", "--name", "web", "--label", "app=web", ref, "sh", "-c",
                        "echo hello; echo oops >&2; exec sleep 300", binary=binary).stdout.strip()
    assert len(cid) == 64
    ps = engine.docker("ps", "--format", "{{.ID}} {{.Names}} {{.Image}} {{.State}}", binary=binary).stdout
    assert f"{cid[:12]} web {ref} running" in ps.splitlines()
    filtered = engine.docker("ps", "-q", "--filter", "label=app=web", binary=binary).stdout.split()
    assert filtered == [cid[:12]]
    assert engine.docker("ps", "-q", "--filter", "label=app=other", binary=binary).stdout.strip() == ""

    _wait_for_output(engine, "web", binary)
    logs = engine.docker("logs", "web", binary=binary)
    assert logs.stdout == "hello\n"
    assert logs.stderr == "oops\n"  # stdcopy keeps the streams apart

    ex = engine.docker("exec", "web", "sh", "-c", "echo out; echo err >&2; exit 3", binary=binary, check=False)
    assert (ex.returncode, ex.stdout, ex.stderr) == (3, "out\n", "err\n")
    missing = engine.docker("exec", "web", "no-such-command", binary=binary, check=False)
    assert missing.returncode == 126  # dockerd 20.10's, its words on stdout (test_versus_dockerd_more)
    assert "no-such-command" in missing.stdout

    inspected = json.loads(engine.docker("inspect", "web", binary=binary).stdout)[0]
    rpc = engine.daemon.call("container.inspect", id="web")
    assert inspected["Id"] == rpc["Id"] == cid
    assert inspected["Name"] == rpc["Name"] == "/web"
    assert inspected["State"]["Status"] == rpc["State"]["Status"] == "running"
    assert inspected["State"]["Pid"] == rpc["State"]["Pid"] > 0
    assert inspected["Image"] == rpc["Image"] == rpc_image["Id"]
    assert inspected["Config"]["Labels"]["app"] == "web"

    engine.docker("stop", "-t", "1", "web", binary=binary)
    assert engine.daemon.call("container.inspect", id="web")["State"]["Status"] == "exited"
    engine.docker("stop", "web", binary=binary)  # already stopped: docker's 304, not an error
    engine.docker("rm", "web", binary=binary)
    assert engine.daemon.call("container.list", all=True) == []

    removed = engine.docker("rmi", ref, binary=binary).stdout
    assert f"Untagged: {ref}" in removed
    assert "Deleted: " + rpc_image["Id"] in removed
    assert engine.daemon.call("image.list") == []


def _wait_for_output(engine: Engine, name: str, binary: str, timeout: float = 10) -> None:
    """Until the container has written to both its stdout and its stderr: the two are logged
    by separate pipes, so one may show before the other."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        logs = engine.docker("logs", name, binary=binary)
        if logs.stdout and logs.stderr:
            return
        time.sleep(0.1)
    raise AssertionError(f"{name} wrote not both streams within {timeout}s")


def test_run_pulls_a_missing_image_and_logs_follow_ends_with_the_container(engine: Engine) -> None:
    ref = engine.image_ref()
    run = engine.docker("run", "-d", "--name", "counter", ref, "sh", "-c",
                        "for i in 1 2 3; do echo line $i; sleep 0.3; done", timeout=120)
    assert "Unable to find image" in run.stderr  # the CLI pulled after our 404
    assert engine.daemon.call("image.inspect", id=ref)["RepoTags"] == [ref]
    started = time.monotonic()
    followed = engine.docker("logs", "-f", "--timestamps", "counter", timeout=30)
    lines = followed.stdout.splitlines()
    assert [line.split(" ", 1)[1] for line in lines] == ["line 1", "line 2", "line 3"]
    assert all(line.split(" ", 1)[0].endswith("Z") for line in lines)
    assert time.monotonic() - started < 10
    tail = engine.docker("logs", "--tail", "1", "counter").stdout
    assert tail == "line 3\n"
    waited = engine.docker("wait", "counter").stdout.strip()
    assert waited == "0"


def test_errors_have_docker_status_and_words(engine: Engine) -> None:
    missing = engine.docker("inspect", "nosuch", check=False)
    assert missing.returncode == 1
    assert "No such object: nosuch" in missing.stderr
    gone = engine.docker("rm", "nosuch", check=False)
    assert gone.returncode == 1 and "No such container" in gone.stderr
    ref = engine.image_ref()
    engine.docker("pull", ref, timeout=120)
    refused = engine.docker("run", "-d", "--blkio-weight", "300", ref, "true", check=False)
    assert refused.returncode == 125
    assert "HostConfig.BlkioWeight is not supported" in refused.stderr
    parent = engine.docker("run", "-d", "--cgroup-parent", "mine", ref, "true", check=False)
    assert parent.returncode == 125 and "HostConfig.CgroupParent is not supported" in parent.stderr
    engine.docker("run", "-d", "--name", "busy", ref, "sleep", "300")
    conflict = engine.docker("rm", "busy", check=False)
    assert conflict.returncode == 1 and "You cannot remove a running container" in conflict.stderr
    taken = engine.docker("create", "--name", "busy", ref, "true", check=False)
    assert taken.returncode == 1 and "already in use" in taken.stderr
    assert engine.daemon.call("container.inspect", id="busy")["State"]["Status"] == "running"
    engine.docker("rm", "-f", "busy")


def test_networks_are_the_engines_own(engine: Engine) -> None:
    created = engine.docker("network", "create", "--subnet", "10.201.7.0/24", "--label", "team=a",
                            "appnet").stdout.strip()
    listed = engine.docker("network", "ls", "--format", "{{.ID}} {{.Name}} {{.Driver}}").stdout.splitlines()
    assert f"{created[:12]} appnet bridge" in listed
    rpc = {n["Name"]: n for n in engine.daemon.call("network.list")}
    assert rpc["appnet"]["Id"] == created
    assert rpc["appnet"]["IPAM"]["Config"][0]["Subnet"] == "10.201.7.0/24"
    inspected = json.loads(engine.docker("network", "inspect", "appnet").stdout)[0]
    assert inspected["Labels"] == {"team": "a"}
    assert inspected["Options"] == {}  # as dockerd: only the options given (compose compares them)
    only = engine.docker("network", "ls", "-q", "--filter", "label=team=a").stdout.split()
    assert only == [created[:12]]
    engine.docker("network", "rm", "appnet")
    assert "appnet" not in {n["Name"] for n in engine.daemon.call("network.list")}
    unsupported = engine.docker("network", "create", "--ipv6", "v6net", check=False)
    assert unsupported.returncode == 1 and "EnableIPv6" in unsupported.stderr


def test_links_on_a_user_network(make_engine: EngineFactory, busybox_archive) -> None:
    """--link on a user network (docker-compose's one-off `run` sends links too), as dockerd
    answers it."""
    engine = make_engine(load_busybox=busybox_archive)
    engine.docker("network", "create", "appnet")
    # the alias resolves to the linked container (an /etc/hosts entry, as docker's
    # legacy links); a link to a stopped container is refused with docker's words
    engine.docker("run", "-d", "--name", "linked", "--network", "appnet", "busybox", "sh", "-c",
                  "head -c 300000 /dev/zero > /written; exec sleep 300")
    # ps -s and system df measure the writable layer (and, for the virtual size, the image's),
    # once the container has written its 300 kB (it goes on after `run -d` answered)
    deadline = time.monotonic() + 10
    while not ((sized := re.fullmatch(r"(\d+)kB \(virtual ([\d.]+)MB\)\n",
                                      shown := engine.docker("ps", "-s", "--format", "{{.Size}}").stdout))
               and int(sized[1]) >= 300):
        assert time.monotonic() < deadline, shown
        time.sleep(0.2)
    assert 300 <= int(sized[1]) < 400 and float(sized[2]) > 2.2  # 300 kB + busybox's 1.98 MB
    df = engine.docker("system", "df", "--format", "{{.Type}} {{.Size}}").stdout.splitlines()
    assert any(re.fullmatch(r"Containers 3\d\d(\.\d)?kB", line) for line in df), df
    # on a user network, as dockerd does, the alias is answered by the embedded DNS for the
    # linking container only, and /etc/hosts gets no entry
    resolved = engine.docker("run", "--rm", "--network", "appnet", "--link", "linked:db", "busybox",
                             "sh", "-c", "grep -cw db /etc/hosts; ping -c1 -W2 db | head -1")
    ip = engine.daemon.call("container.inspect", id="linked")["NetworkSettings"]["Networks"]["appnet"]["IPAddress"]
    assert resolved.stdout.splitlines() == ["0", f"PING db ({ip}): 56 data bytes"], resolved.stdout
    unlinked = engine.docker("run", "--rm", "--network", "appnet", "busybox", "ping", "-c1", "-W2", "db",
                             check=False)
    assert unlinked.returncode != 0 and "bad address 'db'" in unlinked.stderr + unlinked.stdout
    engine.docker("stop", "-t", "0", "linked")
    # on a user network dockerd takes a link to a stopped container (it resolves once it runs)
    stopped = engine.docker("run", "--rm", "--network", "appnet", "--link", "linked:db", "busybox",
                            "sh", "-c", "ping -c1 -W1 db", check=False)
    assert stopped.returncode == 1 and "bad address 'db'" in stopped.stderr, stopped
    missing = engine.docker("create", "--link", "nosuch:db", "busybox", "true", check=False)
    assert missing.returncode == 1 and "could not get container for nosuch: No such container: nosuch" in missing.stderr
    engine.docker("rm", "linked")
    engine.docker("network", "rm", "appnet")
    # system prune asks for the build cache too (POST /build/prune): nothing was built here
    pruned = engine.docker("system", "prune", "-f")
    assert "Total reclaimed space" in pruned.stdout


def test_run_rm_frees_its_network_and_volume_before_it_returns(make_engine: EngineFactory, busybox_archive) -> None:
    """`docker run --rm` waits for condition=removed: as with dockerd, the network and the
    volume are free the moment it returns (a script's next line removes them)."""
    engine = make_engine(load_busybox=busybox_archive)
    for round_ in range(3):
        engine.docker("network", "create", f"rmnet{round_}")
        engine.docker("volume", "create", f"rmvol{round_}")
        engine.docker("run", "--rm", "--network", f"rmnet{round_}", "-v", f"rmvol{round_}:/data",
                      "busybox", "sh", "-c", "echo x > /data/x")
        assert engine.docker("network", "rm", f"rmnet{round_}", check=False).returncode == 0
        assert engine.docker("volume", "rm", f"rmvol{round_}", check=False).returncode == 0


def test_expose_and_publish_all_reach_the_container(make_engine: EngineFactory, busybox_archive) -> None:
    """`--expose` then `-P`: each exposed port (a range, udp too) gets a host port, as `docker
    port` shows, and a request to it reaches the container's server; a port exposed and not
    published is listed bare by `ps`, as dockerd lists it."""
    engine = make_engine(load_busybox=busybox_archive, network="bridge")
    engine.docker("run", "-d", "--name", "exposed", "--expose", "8000", "--expose", "9000-9001/udp", "-P",
                  "busybox", "sh", "-c", "echo served > /index.html; exec httpd -f -p 8000 -h /")
    engine.docker("run", "-d", "--name", "bare", "--expose", "7000", "busybox", "sleep", "300")
    try:
        ports = engine.docker("port", "exposed").stdout
        tcp = re.search(r"^8000/tcp -> 0\.0\.0\.0:(\d+)$", ports, re.M)
        assert tcp, ports
        assert all(re.search(rf"^{p}/udp -> 0\.0\.0\.0:\d+$", ports, re.M) for p in (9000, 9001)), ports
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{tcp[1]}/index.html", timeout=5) as response:
                    assert response.read() == b"served\n"
                    break
            except OSError:
                assert time.monotonic() < deadline, "the published port never answered"
                time.sleep(0.2)
        listed = engine.docker("ps", "--filter", "name=bare", "--format", "{{.Ports}}").stdout
        assert listed == "7000/tcp\n", listed
    finally:
        engine.docker("rm", "-f", "exposed", "bare")


def test_events_stream_and_history(engine: Engine) -> None:
    ref = engine.image_ref()
    engine.docker("pull", ref, timeout=120)
    since = time.time()
    # --since: the watcher gets every event from `since` on, however late it subscribes
    watcher = subprocess.Popen(["/usr/local/bin/docker", "events", "--since", f"{since:.3f}",
                                "--format", "{{json .}}", "--filter", "type=container"],
                               env=engine.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(watcher.stdout or ()), daemon=True)
    reader.start()
    try:
        cid = engine.docker("run", "-d", "--name", "ev", ref, "true").stdout.strip()
        engine.docker("wait", "ev")
        engine.docker("rm", "ev")
        until = time.time() + 0.5
        # the destroy event is the last one: wait until the watcher has printed it
        assert wait_until(lambda: any(cid in line and '"destroy"' in line for line in list(lines)), 20), lines
    finally:
        watcher.terminate()
        watcher.wait(10)
        reader.join(10)
    live = [json.loads(line) for line in lines]
    actions = [(e["Type"], e["Action"]) for e in live if e["Actor"]["ID"] == cid]
    assert ("container", "create") in actions and ("container", "destroy") in actions
    assert actions.index(("container", "start")) < actions.index(("container", "die"))
    die = next(e for e in live if e["Action"] == "die")
    assert die["Actor"]["Attributes"]["exitCode"] == "0"
    assert die["Actor"]["Attributes"]["name"] == "ev"
    # the same events from the history, bounded by --until (the CLI exits by itself)
    past = engine.docker("events", "--since", f"{since:.3f}", "--until", f"{until:.3f}", "--format",
                         "{{.Type}} {{.Action}} {{.Actor.ID}}", timeout=20).stdout.splitlines()
    assert f"container start {cid}" in past and f"container destroy {cid}" in past
    assert f"image pull {engine.daemon.call('image.inspect', id=ref)['Id']}" not in past  # before since
    bad = engine.docker("events", "--filter", "plugin=x", "--until", "0", check=False)
    assert bad.returncode == 1 and "invalid filter plugin" in bad.stderr


def test_push_and_login_with_registry_auth(make_engine: EngineFactory, tmp_path, busybox_archive) -> None:
    from engine.testing.registry import registry_server

    with registry_server(tmp_path / "authreg", users={"alice": "secret"}) as reg:
        engine = make_engine(registry=reg, load_busybox=busybox_archive)
        target = f"{reg.host}/mine/busybox:v1"
        engine.docker("tag", "busybox:latest", target)
        denied = engine.docker("push", target, check=False, timeout=60)
        assert denied.returncode == 1
        wrong = engine.docker("login", "-u", "alice", "--password-stdin", reg.host, input="nope", check=False)
        assert wrong.returncode == 1
        engine.docker("login", "-u", "alice", "--password-stdin", reg.host, input="secret")
        pushed = engine.docker("push", target, timeout=120)
        assert "v1: digest: sha256:" in pushed.stdout
        # the daemon stored nothing: the credentials came with the request
        assert not (engine.daemon.base / "etc" / "auth.json").exists()
        assert not (engine.daemon.root / "auth.json").exists()
        # what was pushed can be pulled back through the Docker API with the same login
        engine.docker("rmi", target)
        engine.docker("pull", target, timeout=120)
        assert engine.daemon.call("image.inspect", id=target)["Id"] == engine.daemon.call(
            "image.inspect", id="busybox:latest")["Id"]
