"""A bind's mount propagation through the Docker API with the real docker CLI: ``-v
SRC:DST:rshared`` (HostConfig.Binds) exchanges mounts with the host both ways, ``--mount
type=bind,…,bind-propagation=rslave`` (HostConfig.Mounts[].BindOptions.Propagation)
receives the host's only; inspect shows it; a source that cannot propagate is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.testing.mounts import mount, propagating_dir

from .conftest import Engine, EngineFactory, docker_clients


@pytest.fixture
def engine(make_engine: EngineFactory, busybox_archive: Path) -> Engine:
    return make_engine(load_busybox=busybox_archive)


@pytest.mark.parametrize("binary", docker_clients())
def test_docker_bind_propagation(engine: Engine, binary: str, tmp_path: Path) -> None:
    flags = tmp_path / "flags"
    flags.mkdir()
    (flags / "from-host").write_text("host\n")
    with propagating_dir(tmp_path / "vol", "rshared") as source:
        for name in ("hostmnt", "ctrmnt-shared", "ctrmnt-slave"):
            (source / name).mkdir()
        # SYS_ADMIN: the containers mount too
        engine.docker("run", "-d", "--name", "shared", "--cap-add", "SYS_ADMIN", "-v", f"{source}:/mnt/vol:rshared",
                      "busybox", "sleep", "1000", binary=binary)
        engine.docker("run", "-d", "--name", "slave", "--cap-add", "SYS_ADMIN", "--mount",
                      f"type=bind,source={source},target=/mnt/vol,bind-propagation=rslave", "busybox", "sleep",
                      "1000", binary=binary)
        try:
            for name, mode in (("shared", "rshared"), ("slave", "rslave")):
                mounts = json.loads(engine.docker("inspect", "-f", "{{json .Mounts}}", name, binary=binary).stdout)
                assert [(m["Type"], m["Source"], m["Destination"], m["Propagation"]) for m in mounts] == \
                    [("bind", str(source), "/mnt/vol", mode)]

            mount("--bind", str(flags), str(source / "hostmnt"))
            for name in ("shared", "slave"):
                assert engine.docker("exec", name, "ls", "/mnt/vol/hostmnt", binary=binary).stdout.split() == \
                    ["from-host"]
                engine.docker("exec", name, "sh", "-c", f"mount -t tmpfs tmpfs /mnt/vol/ctrmnt-{name} && "
                              f"echo {name} > /mnt/vol/ctrmnt-{name}/from-container", binary=binary)
            assert (source / "ctrmnt-shared" / "from-container").read_text() == "shared\n"
            assert not (source / "ctrmnt-slave" / "from-container").exists()
        finally:
            engine.docker("rm", "-f", "shared", "slave", binary=binary, check=False)

    with propagating_dir(tmp_path / "private", "rprivate") as private:
        refused = engine.docker("run", "--rm", "--mount", f"type=bind,source={private},target=/mnt,"
                                "bind-propagation=rslave", "busybox", "true", binary=binary, check=False)
        assert refused.returncode != 0
        assert f"path '{private}' is mounted on '{private}' but it is not a shared or slave mount" in refused.stderr
