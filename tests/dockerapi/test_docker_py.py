"""docker-py (the ``docker`` package from PyPI) against engine's Docker API: its common calls,
unchanged, each test with its own engined and registry."""

from __future__ import annotations

import time

import pytest

from .conftest import Engine

docker = pytest.importorskip("docker", reason="docker-py is in the test extras (pip install -e .[test])")


def test_system_calls(engine: Engine) -> None:
    client = engine.docker_py()
    try:
        assert client.ping() is True
        version = client.version()
        assert version["ApiVersion"] == "1.47"
        assert client.api.api_version == "1.47"  # negotiated ("auto")
        info = client.info()
        assert info["Images"] == 0 and info["OSType"] == "linux"
    finally:
        client.close()


def test_pull_run_exec_logs_remove(engine: Engine) -> None:
    client = engine.docker_py()
    try:
        repo = engine.image_ref().rsplit(":", 1)[0]
        image = client.images.pull(repo, tag="latest")
        assert engine.image_ref() in image.tags
        assert client.images.get(engine.image_ref()).id == image.id
        assert [i.id for i in client.images.list()] == [image.id]

        # run without detach: create, start, wait, logs
        out = client.containers.run(engine.image_ref(), ["sh", "-c", "echo from-run"], remove=False)
        assert out == b"from-run\n"

        ctr = client.containers.run(engine.image_ref(), ["sh", "-c", "echo ready; exec sleep 300"],
                                    detach=True, name="py", labels={"k": "v"})
        assert ctr.name == "py"
        ctr.reload()
        assert ctr.status == "running"
        assert ctr.labels["k"] == "v"
        assert [c.name for c in client.containers.list(filters={"label": "k=v"})] == ["py"]
        deadline = time.monotonic() + 10
        while b"ready" not in ctr.logs() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ctr.logs() == b"ready\n"

        code, output = ctr.exec_run(["sh", "-c", "echo $((6*7)); exit 4"])
        assert (code, output) == (4, b"42\n")
        code, (out_b, err_b) = ctr.exec_run(["sh", "-c", "echo o; echo e >&2"], demux=True)
        assert (code, out_b, err_b) == (0, b"o\n", b"e\n")

        ctr.stop(timeout=1)
        ctr.reload()
        assert ctr.status == "exited"
        assert ctr.wait()["StatusCode"] == 137
        ctr.remove()
        with pytest.raises(docker.errors.NotFound):
            client.containers.get("py")
        client.containers.prune()
        assert client.containers.list(all=True) == []
        assert engine.daemon.call("container.list", all=True) == []
    finally:
        client.close()


def test_errors_are_docker_py_exceptions(engine: Engine) -> None:
    client = engine.docker_py()
    try:
        with pytest.raises(docker.errors.ImageNotFound):
            client.images.get("nosuch:latest")
        with pytest.raises(docker.errors.NotFound):
            client.containers.get("nosuch")
        with pytest.raises(docker.errors.ImageNotFound):
            client.api.create_container("nosuch:latest", "true")
        client.images.pull(engine.image_ref())
        with pytest.raises(docker.errors.APIError) as refused:
            client.containers.create(engine.image_ref(), "true", blkio_weight=300)
        assert refused.value.status_code == 400
        assert "HostConfig.BlkioWeight" in str(refused.value)
        with pytest.raises(docker.errors.APIError) as later:
            client.images.search("busybox")  # image search: not served
        assert later.value.status_code == 501
        assert "not served by engine's Docker API yet" in str(later.value)
    finally:
        client.close()


def test_networks_and_events(engine: Engine) -> None:
    client = engine.docker_py()
    try:
        since = time.time()
        net = client.networks.create("pynet", driver="bridge", labels={"a": "b"})
        assert client.networks.get(net.id).name == "pynet"
        assert "pynet" in [n.name for n in client.networks.list()]
        assert [n.name for n in client.networks.list(filters={"label": "a=b"})] == ["pynet"]
        net.remove()
        assert "pynet" not in [n.name for n in client.networks.list()]
        events = list(client.events(since=since, until=time.time() + 0.5, decode=True,
                                    filters={"type": "network"}))
        assert [(e["Action"], e["Actor"]["Attributes"]["name"]) for e in events] == [
            ("create", "pynet"), ("destroy", "pynet")]
    finally:
        client.close()
