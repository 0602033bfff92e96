"""A list given both in daemon.json and as flags is refused, as dockerd refuses it ("the
following directives are specified both as a flag and in the configuration file"): a flag
used to replace the file's list without a word. Single values keep "the flag wins"."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.errors import ConfigError
from engine.supervisor.config import LIST_FIELDS, DaemonConfig, config_from_args
from engine.testing.daemon import Daemon


def configure(tmp_path: Path, file: dict[str, object], *flags: str) -> DaemonConfig:
    path = tmp_path / "daemon.json"
    path.write_text(json.dumps(file))
    return config_from_args(["--config", str(path), *flags])[0]


def test_every_list_key_is_covered() -> None:
    assert LIST_FIELDS == {"hosts", "docker_hosts", "default_address_pools", "insecure_registries",
                           "registry_mirrors", "ws_allowed_origins", "cni_bin_dirs"}


@pytest.mark.parametrize(("key", "file_value", "flags"), [
    ("ws-allowed-origins", ["http://a.example"], ["--ws-allowed-origin", "http://b.example"]),
    ("insecure-registries", ["127.0.0.1:5000"], ["--insecure-registry", "127.0.0.1:5001"]),
    ("registry-mirrors", ["http://m.example"], ["--registry-mirror", "http://n.example"]),
    ("hosts", ["unix:///tmp/a.sock"], ["-H", "unix:///tmp/b.sock"]),
    ("docker-hosts", ["unix:///tmp/d.sock"], ["--docker-host", "unix:///tmp/e.sock"]),
    ("cni-bin-dirs", ["/opt/a"], ["--cni-bin-dir", "/opt/b"]),
    ("default-address-pools", [{"base": "10.210.0.0/16", "size": 24}],
     ["--default-address-pool", "base=10.211.0.0/16,size=24"]),
])
def test_a_list_in_both_places_is_a_conflict(tmp_path: Path, key: str, file_value: list[object],
                                             flags: list[str]) -> None:
    with pytest.raises(ConfigError) as failed:
        configure(tmp_path, {key: file_value}, *flags)
    message = str(failed.value)
    assert "specified both as a flag and in the configuration file" in message
    assert f"{key}: (from flag: " in message and "from file: " in message
    assert json.dumps(file_value)[1:-1] in message  # the file's value, to see what clashed


def test_every_conflict_is_named_at_once_and_single_values_still_take_the_flag(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as failed:
        configure(tmp_path, {"insecure-registries": ["a:1"], "ws-allowed-origins": ["http://a.example"]},
                  "--insecure-registry", "b:1", "--ws-allowed-origin", "http://b.example")
    assert "insecure-registries:" in str(failed.value) and "ws-allowed-origins:" in str(failed.value)
    config = configure(tmp_path, {"default-runtime": "crun", "insecure-registries": ["a:1"]},
                       "--default-runtime", "runc", "--ws-allowed-origin", "http://b.example")
    # a scalar: the flag wins; a list in one place only: that list, whichever place it is
    assert config.default_runtime == "runc"
    assert config.insecure_registries == ["a:1"]
    assert config.ws_allowed_origins == ["http://b.example"]


def test_the_daemon_refuses_to_start_and_a_reload_keeps_the_running_lists(tmp_path: Path) -> None:
    path = tmp_path / "daemon.json"
    path.write_text(json.dumps({"ws-allowed-origins": ["http://a.example"]}))
    refused = subprocess.run(
        [sys.executable, "-m", "engine.supervisor.daemon", "--config", str(path), "--root", str(tmp_path / "r"),
         "--run-root", str(tmp_path / "rr"), "--ws-allowed-origin", "http://b.example"],
        capture_output=True, text=True, timeout=30)
    assert refused.returncode == 1
    assert "ws-allowed-origins: (from flag: [\"http://b.example\"], from file: [\"http://a.example\"])" in refused.stderr

    d = Daemon(config={"log-level": "info"}, extra_args=["--insecure-registry", "127.0.0.1:5999"])
    d.start()
    try:
        (d.base / "daemon.json").write_text(json.dumps({"insecure-registries": ["127.0.0.1:5998"]}))
        assert d.proc is not None
        d.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "reload failed, keeping the running configuration" not in d.log():
            assert time.monotonic() < deadline, d.log()[-2000:]
            time.sleep(0.05)
        assert "specified both as a flag and in the configuration file" in d.log()
        assert d.call("system.ping") == "pong"  # the daemon stays up on its running config
    finally:
        d.cleanup()


def test_a_chosen_resolv_conf_must_be_a_file(tmp_path: Path) -> None:
    """A missing --resolv-conf is refused at start, naming the path; the default may be
    missing (a host without DNS still runs containers)."""
    with pytest.raises(ConfigError, match=r"resolv-conf .*/nosuch is not a file"):
        configure(tmp_path, {}, "--resolv-conf", str(tmp_path / "nosuch"))
    with pytest.raises(ConfigError, match=r"resolv-conf .*/nosuch is not a file"):
        configure(tmp_path, {"resolv-conf": str(tmp_path / "nosuch")})
    given = tmp_path / "resolv.conf"
    given.write_text("nameserver 192.0.2.53\n")
    assert configure(tmp_path, {}, "--resolv-conf", str(given)).resolv_conf == str(given)
    assert configure(tmp_path, {}).resolv_conf == "/etc/resolv.conf"
