"""More of the docker CLI against engine and against a private dockerd, side by side (the
fixtures and helpers of test_versus_dockerd): each test one behaviour, both sides equal
and equal to dockerd's recorded output."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from . import test_versus_dockerd as versus
from .conftest import DOCKER_CLIENTS
from .test_versus_dockerd import Pair

# the fixtures of test_versus_dockerd, found by pytest under their own names
pair, private_registry = versus.pair, versus.private_registry

# an image whose /etc/group lists memberships (busybox's lists none)
GROUPS = ("root:x:0:\ndaemon:x:1:nobody\nnobody:x:65534:\nwheel:x:10:root,nobody\n"
          "staff:x:50:daemon,root\nusers:x:100:nobody\n")


def test_user_supplementary_groups_as_dockerd(pair: Pair) -> None:
    """`-u`: the primary gid is always a supplementary group, the image's memberships of the
    user's name are added when no group is given (none with `-u name:group` or `uid:gid`),
    and `--group-add` on top; the same for `exec -u`."""
    pair.setup("run", "--name", "vs-groups-src", "busybox", "sh", "-c", f"printf '{GROUPS}' > /etc/group")
    try:
        pair.setup("commit", "vs-groups-src", "vs-groups:1")
        expected = {
            "0:0": "uid=0(root) gid=0(root) groups=0(root)",
            "root": "uid=0(root) gid=0(root) groups=0(root),10(wheel),50(staff)",
            "nobody": "uid=65534(nobody) gid=65534(nobody) groups=1(daemon),10(wheel),100(users),65534(nobody)",
            "nobody:users": "uid=65534(nobody) gid=100(users) groups=100(users)",
            "1000:1000": "uid=1000 gid=1000 groups=1000",
            "1000": "uid=1000 gid=0(root) groups=0(root)",
            "daemon": "uid=1(daemon) gid=1(daemon) groups=1(daemon),50(staff)",
        }
        for user, line in expected.items():
            ours, theirs = pair.both("run", "--rm", "-u", user, "vs-groups:1", "id")
            assert ours.stdout == theirs.stdout == line + "\n", (user, ours.stdout, ours.stderr, theirs.stdout)
        ours, theirs = pair.both("run", "--rm", "vs-groups:1", "id")
        assert ours.stdout == theirs.stdout == "uid=0(root) gid=0(root) groups=0(root),10(wheel),50(staff)\n"
        ours, theirs = pair.both("run", "--rm", "-u", "nobody", "--group-add", "50", "vs-groups:1", "id")
        assert ours.stdout == theirs.stdout == (
            "uid=65534(nobody) gid=65534(nobody) groups=1(daemon),10(wheel),50(staff),100(users),65534(nobody)\n")
        pair.setup("run", "-d", "--name", "vs-groups-run", "vs-groups:1", "sleep", "600")
        for user in ("nobody", "1000:1000", "0:0"):
            ours, theirs = pair.both("exec", "-u", user, "vs-groups-run", "id")
            assert ours.stdout == theirs.stdout == expected[user] + "\n", (user, ours.stdout, theirs.stdout)
    finally:
        pair.both("rm", "-f", "vs-groups-src", "vs-groups-run")
        pair.both("rmi", "vs-groups:1")


def test_exec_that_cannot_start_as_dockerd_tells_it(pair: Pair) -> None:
    """`docker exec` of a missing command, a non-executable file, a missing path or a
    missing working directory: dockerd 20.10 exits 126 for all, its error on stdout (the
    exec's stream, ``\\r\\n``-ended) in containerd's words around runc's."""
    runc = "OCI runtime exec failed: exec failed: unable to start container process: "
    cases = {
        ("nosuchcmd",): 'exec: "nosuchcmd": executable file not found in $PATH',
        ("/etc/passwd",): 'exec: "/etc/passwd": permission denied',
        ("/nosuch/x",): 'exec: "/nosuch/x": stat /nosuch/x: no such file or directory',
        ("-w", "/nosuch", "vs-running", "pwd"): 'chdir to cwd ("/nosuch") set in config.json failed: '
                                               "no such file or directory",
    }
    for args, words in cases.items():
        full = args if "vs-running" in args else ("vs-running", *args)
        ours, theirs = pair.both("exec", *full)
        assert (ours.returncode, ours.stdout, ours.stderr) == (theirs.returncode, theirs.stdout, theirs.stderr), args
        assert (ours.returncode, ours.stdout, ours.stderr) == (126, f"{runc}{words}: unknown\n", ""), args
    engine = pair.engine.run("exec", "vs-running", "nosuchcmd")
    raw = subprocess.run([DOCKER_CLIENTS[0], "exec", "vs-running", "nosuchcmd"], capture_output=True,
                         env={**os.environ, "DOCKER_HOST": pair.engine.host}, timeout=60)
    assert raw.stdout.endswith(b": unknown\r\n") and engine.returncode == 126
    ours, theirs = pair.both("exec", "-t", "vs-running", "nosuchcmd")  # with a terminal: the same
    assert (ours.returncode, ours.stdout) == (theirs.returncode, theirs.stdout) == (
        126, f'{runc}exec: "nosuchcmd": executable file not found in $PATH: unknown\n')


def test_no_healthcheck_is_recorded_as_none(pair: Pair) -> None:
    """`--no-healthcheck` over an image with a check: inspect shows dockerd's {"Test":
    ["NONE"]} (with the image's times), `commit` records it (engine kept the image's check),
    a container of that image has none; without any check in the image the same NONE."""
    pair.setup("create", "--name", "vs-hc-src", "--health-cmd", "true", "--health-interval", "5s", "busybox", "true")
    names = ["vs-hc-src", "vs-hc-off", "vs-hc-off-plain", "vs-hc-child"]
    try:
        pair.setup("commit", "vs-hc-src", "vs-hc:1")
        pair.setup("create", "--name", "vs-hc-off", "--no-healthcheck", "vs-hc:1", "true")
        none_with_times = '{"Test":["NONE"],"Interval":5000000000}\n'
        ours, theirs = pair.both("inspect", "-f", "{{json .Config.Healthcheck}}", "vs-hc-off")
        assert ours.stdout == theirs.stdout == none_with_times, (ours.stdout, theirs.stdout)
        pair.setup("commit", "vs-hc-off", "vs-hc-off:1")
        ours, theirs = pair.both("image", "inspect", "-f", "{{json .Config.Healthcheck}}", "vs-hc-off:1")
        assert ours.stdout == theirs.stdout == none_with_times, (ours.stdout, theirs.stdout)
        pair.setup("create", "--name", "vs-hc-child", "vs-hc-off:1", "true")
        ours, theirs = pair.both("inspect", "-f", "{{json .Config.Healthcheck}} {{json .State.Health}}", "vs-hc-child")
        assert ours.stdout == theirs.stdout == none_with_times.replace("\n", " null\n"), (ours.stdout, theirs.stdout)
        pair.setup("create", "--name", "vs-hc-off-plain", "--no-healthcheck", "busybox", "true")
        ours, theirs = pair.both("inspect", "-f", "{{json .Config.Healthcheck}}", "vs-hc-off-plain")
        assert ours.stdout == theirs.stdout == '{"Test":["NONE"]}\n', (ours.stdout, theirs.stdout)
    finally:
        pair.both("rm", "-f", *names)
        pair.both("rmi", "vs-hc-off:1", "vs-hc:1")


def test_links_on_a_user_network_in_inspect(pair: Pair) -> None:
    """`--link T:ALIAS --link T2` on a user network: the endpoint's Links are the links as
    given (engine showed null), before and after the start; HostConfig.Links stays null."""
    pair.setup("network", "create", "--subnet", "10.231.9.0/24", "vs-link-net")
    try:
        pair.setup("run", "-d", "--name", "vs-link-target", "--network", "vs-link-net", "busybox", "sleep", "600")
        pair.setup("create", "--name", "vs-link-src", "--network", "vs-link-net", "--link", "vs-link-target:db",
                   "--link", "vs-running", "busybox", "sleep", "600")
        template = '{{json (index .NetworkSettings.Networks "vs-link-net").Links}} {{json .HostConfig.Links}}'
        for state in ("created", "running"):
            if state == "running":
                pair.setup("start", "vs-link-src")
            ours, theirs = pair.both("inspect", "-f", template, "vs-link-src")
            assert ours.stdout == theirs.stdout == '["vs-link-target:db","vs-running"] null\n', (
                state, ours.stdout, ours.stderr, theirs.stdout)
        ours, theirs = pair.both("exec", "vs-link-src", "ping", "-c1", "-W2", "db")
        assert ours.returncode == theirs.returncode == 0, (ours.stdout, theirs.stdout)
    finally:
        pair.both("rm", "-f", "vs-link-src", "vs-link-target")
        pair.both("network", "rm", "vs-link-net")


def test_logs_keep_an_exited_containers_unended_last_line(pair: Pair) -> None:
    """A container that exits without ending its last line (stdout, or stderr): `docker
    logs` gives that text, without a newline, as dockerd's (engine dropped it), with --tail
    and -t too; a running container's unended line is not shown yet (neither shows it).
    The other stream's line comes half a second earlier: two unended lines, flushed at the
    exit, would be logged in either order (dockerd's too)."""
    pair.setup("run", "--name", "vs-nonl", "busybox", "sh", "-c",
               "printf 'err\\n' >&2; sleep 0.5; printf 'a\\nb-no-newline'")
    pair.setup("run", "--name", "vs-nonl-err", "busybox", "sh", "-c", "echo out; sleep 0.5; printf 'e-no-newline' >&2")
    pair.setup("run", "-d", "--name", "vs-nonl-run", "busybox", "sh", "-c", "printf abc; sleep 600")
    try:
        expected = {
            ("vs-nonl",): ("a\nb-no-newline", "err\n"),
            ("--tail", "1", "vs-nonl"): ("b-no-newline", ""),
            ("--tail", "2", "vs-nonl"): ("a\nb-no-newline", ""),
            ("vs-nonl-err",): ("out\n", "e-no-newline"),
            ("--tail", "1", "vs-nonl-err"): ("", "e-no-newline"),
        }
        for args, streams in expected.items():
            ours, theirs = pair.both("logs", *args)
            assert (ours.stdout, ours.stderr) == (theirs.stdout, theirs.stderr) == streams, args
        ours, theirs = pair.both("logs", "-t", "vs-nonl")
        stamp = re.compile(r"^\d{4}-\d\d-\d\dT[\d:.]+Z ", re.M)
        assert stamp.sub("", ours.stdout) == stamp.sub("", theirs.stdout) == "a\nb-no-newline"
        ours, theirs = pair.both("logs", "vs-nonl-run")
        assert ours.stdout == theirs.stdout == ""
    finally:
        pair.both("rm", "-f", "vs-nonl", "vs-nonl-err", "vs-nonl-run")


def _tree(base: Path) -> list[str]:
    return sorted(f"{p.relative_to(base)} {'l' if p.is_symlink() else 'd' if p.is_dir() else 'f'}"
                  for p in base.rglob("*"))


def test_cp_out_of_links_and_dir_contents_as_dockerd(pair: Pair, tmp_path: Path) -> None:
    """`docker cp CTR:/dir/. DEST` copies the contents into DEST (engine nested dir/ there);
    `CTR:/link/` (trailing slash) copies the directory the link names (engine copied the
    link); `CTR:/link` copies the link itself."""
    pair.setup("run", "-d", "--name", "vs-cp-links", "busybox", "sleep", "600")
    try:
        pair.setup("exec", "vs-cp-links", "sh", "-c", "mkdir -p /tmp/dd/sub && echo hi > /tmp/dd/f && "
                   "ln -s /tmp/dd /tmp/dlink && ln -s dd /tmp/rlink")
        trees = []
        for side in (pair.engine, pair.dockerd):
            dest = tmp_path / side.name
            (dest / "into").mkdir(parents=True)
            for source, target in (("/tmp/dd/.", "into"), ("/tmp/dd/.", "new"), ("/tmp/dlink/", "viaslash"),
                                   ("/tmp/rlink/.", "viadot"), ("/tmp/dlink", "link")):
                result = side.run("cp", f"vs-cp-links:{source}", str(dest / target))
                assert result.returncode == 0, (side.name, source, result.stderr)
            trees.append(_tree(dest))
        assert trees[0] == trees[1] == [
            "into d", "into/f f", "into/sub d", "link l", "new d", "new/f f", "new/sub d",
            "viadot d", "viadot/f f", "viadot/sub d", "viaslash d", "viaslash/f f", "viaslash/sub d"], trees
        assert os.readlink(tmp_path / "engine" / "link") == "/tmp/dd"
    finally:
        pair.both("rm", "-f", "vs-cp-links")


def test_network_events_name_the_driver_type(pair: Pair) -> None:
    """`docker events --filter type=network`: create and destroy with dockerd's attributes
    (the driver as ``type``; engine said ``driver``)."""
    import time

    since = str(int(time.time()) - 1)
    pair.setup("network", "create", "--subnet", "10.231.10.0/24", "vs-ev-net")
    pair.setup("network", "rm", "vs-ev-net")
    ours, theirs = pair.both("events", "--filter", "type=network", "--filter", "network=vs-ev-net", "--since", since,
                             "--until", str(int(time.time()) + 1),
                             "--format", "{{.Type}} {{.Action}} {{json .Actor.Attributes}}")
    assert ours.stdout == theirs.stdout == (
        'network create {"name":"vs-ev-net","type":"bridge"}\n'
        'network destroy {"name":"vs-ev-net","type":"bridge"}\n'), (ours.stdout, theirs.stdout)


def test_tmpfs_options_merge_over_dockers_defaults(pair: Pair) -> None:
    """`--tmpfs /x[:opts]` and `--mount type=tmpfs`: dockerd mounts with nosuid,nodev,noexec
    merged with the user's options (the last of two on one flag wins) and no size cap
    (engine had size=65536k and only the user's options when some were given); a bad
    option is refused at start in dockerd's words."""
    mounted = {
        ("--tmpfs", "/x"): "rw,nosuid,nodev,noexec,relatime",
        ("--tmpfs", "/x:exec"): "rw,nosuid,nodev,relatime",
        ("--tmpfs", "/x:size=1m"): "rw,nosuid,nodev,noexec,relatime,size=1024k",
        ("--tmpfs", "/x:mode=755"): "rw,nosuid,nodev,noexec,relatime,mode=755",
        ("--tmpfs", "/x:ro"): "ro,nosuid,nodev,noexec,relatime",
        ("--tmpfs", "/x:defaults,suid,size=1m,size=2m"): "rw,nodev,noexec,relatime,size=2048k",
        ("--mount", "type=tmpfs,dst=/x"): "rw,nosuid,nodev,noexec,relatime",
        ("--mount", "type=tmpfs,dst=/x,tmpfs-size=1048576,tmpfs-mode=0700,readonly"):
            "ro,nosuid,nodev,noexec,relatime,size=1024k,mode=700",
    }
    for flags, options in mounted.items():
        ours, theirs = pair.both("run", "--rm", *flags, "busybox", "grep", " /x ", "/proc/mounts")
        assert ours.stdout == theirs.stdout == f"tmpfs /x tmpfs {options} 0 0\n", (flags, ours.stdout, ours.stderr,
                                                                                  theirs.stdout)
    # no 64 MB cap: 80 MB fit
    ours, theirs = pair.both("run", "--rm", "--tmpfs", "/x", "busybox", "sh", "-c",
                             "dd if=/dev/zero of=/x/f bs=1M count=80 2>&1 | tail -1")
    assert ours.stdout == theirs.stdout == "80+0 records out\n", (ours.stdout, theirs.stdout)
    for option, words in (("bogus", '["bogus"]'), ("foo=bar", '["foo" "bar"]')):
        ours, theirs = pair.both("run", "--rm", "--tmpfs", f"/x:{option}", "busybox", "true")
        assert ours.returncode == theirs.returncode == 125
        first = f"docker: Error response from daemon: invalid tmpfs option {words}\n"
        assert ours.stderr.startswith(first) and theirs.stderr.startswith(first), (ours.stderr, theirs.stderr)


def test_tmpfs_in_inspect_as_dockerd(pair: Pair) -> None:
    """A --tmpfs is only in HostConfig.Tmpfs (engine listed it in Mounts too); a --mount
    tmpfs is in HostConfig.Mounts as sent and in Mounts (engine showed it as a --tmpfs,
    and dropped readonly); HostConfig.Tmpfs is null without one."""
    template = "{{json .HostConfig.Tmpfs}} {{json .HostConfig.Mounts}} {{json .Mounts}}"
    mount = '"Type":"tmpfs","Source":"","Destination":"/x","Mode":"","RW":%s,"Propagation":""'
    cases = {
        ("--tmpfs", "/x"): '{"/x":""} null []',
        ("--tmpfs", "/x:exec,size=1m"): '{"/x":"exec,size=1m"} null []',
        ("--mount", "type=tmpfs,dst=/x"): 'null [{"Type":"tmpfs","Target":"/x"}] [{%s}]' % (mount % "true"),
        ("--mount", "type=tmpfs,dst=/x,tmpfs-size=1048576,tmpfs-mode=0700,readonly"): (
            'null [{"Type":"tmpfs","Target":"/x","ReadOnly":true,"TmpfsOptions":{"SizeBytes":1048576,"Mode":448}}] '
            '[{%s}]' % (mount % "false")),
        ("--mount", "type=tmpfs,dst=/x,tmpfs-size=1000"): (
            'null [{"Type":"tmpfs","Target":"/x","TmpfsOptions":{"SizeBytes":1000}}] [{%s}]' % (mount % "true")),
    }
    try:
        for flags, expected in cases.items():
            pair.setup("run", "-d", "--name", "vs-tmpfs", *flags, "busybox", "sleep", "600")
            ours, theirs = pair.both("inspect", "-f", template, "vs-tmpfs")
            assert ours.stdout == theirs.stdout == expected + "\n", (flags, ours.stdout, theirs.stdout)
            pair.setup("rm", "-f", "vs-tmpfs")
    finally:
        pair.both("rm", "-f", "vs-tmpfs")


def test_detached_exec_that_cannot_start_is_an_error(pair: Pair) -> None:
    """`docker exec -d` of what cannot start: dockerd answers the start with the runtime's
    error (exit 1; engine answered 200 and exited 0); one that starts exits 0 whatever its
    command's exit code, and keeps running."""
    runc = "OCI runtime exec failed: exec failed: unable to start container process: "
    cases = {
        ("vs-running", "nosuchcmd"): f'{runc}exec: "nosuchcmd": executable file not found in $PATH: unknown',
        ("-w", "/nosuch", "vs-running", "pwd"): f'{runc}chdir to cwd ("/nosuch") set in config.json failed: '
                                               "no such file or directory: unknown",
        ("-u", "nosuchuser", "vs-running", "true"): "unable to find user nosuchuser: no matching entries in passwd file",
    }
    for args, words in cases.items():
        ours, theirs = pair.both("exec", "-d", *args)
        assert (ours.returncode, ours.stdout, ours.stderr) == (theirs.returncode, theirs.stdout, theirs.stderr) == (
            1, "", f"Error response from daemon: {words}\n"), (args, ours.stderr, theirs.stderr)
    ours, theirs = pair.both("exec", "-d", "vs-running", "sh", "-c", "exit 3")
    assert ours.returncode == theirs.returncode == 0
    ours, theirs = pair.both("exec", "-d", "vs-running", "sh", "-c", "sleep 1; touch /tmp/vs-detached")
    assert ours.returncode == theirs.returncode == 0
    ours, theirs = pair.both("exec", "vs-running", "sh", "-c", "sleep 2; ls /tmp/vs-detached")
    assert ours.stdout == theirs.stdout == "/tmp/vs-detached\n", (ours.stdout, theirs.stdout)


def test_network_connect_and_disconnect_events(pair: Pair) -> None:
    """A container on a user network: dockerd tells `network connect` at every start and
    `network connect` of a running one, `network disconnect` at every stop, removal of a
    running one and `network disconnect` (twice for a running one: the endpoint, then the
    membership); none for `network connect` of a stopped one. engine told only create and
    destroy. The actor is the network, the container its full id."""
    import time

    since = str(int(time.time()) - 1)
    pair.setup("network", "create", "--subnet", "10.231.11.0/24", "vs-ev-conn")
    ids = {}
    try:
        for side in (pair.engine, pair.dockerd):
            made = side.run("create", "--name", "vs-ev-c", "--network", "vs-ev-conn", "busybox", "sleep", "600")
            assert made.returncode == 0, made.stderr
            ids[side.name] = made.stdout.strip()
        for step in (["start", "vs-ev-c"], ["network", "disconnect", "vs-ev-conn", "vs-ev-c"],
                     ["network", "connect", "vs-ev-conn", "vs-ev-c"], ["stop", "-t", "0", "vs-ev-c"],
                     ["network", "disconnect", "vs-ev-conn", "vs-ev-c"], ["network", "connect", "vs-ev-conn", "vs-ev-c"],
                     ["start", "vs-ev-c"], ["rm", "-f", "vs-ev-c"], ["network", "rm", "vs-ev-conn"]):
            pair.setup(*step)
    finally:
        pair.both("rm", "-f", "vs-ev-c")
        pair.both("network", "rm", "vs-ev-conn")
    until = str(int(time.time()) + 1)
    net_ids = {}
    outputs = []
    for side in (pair.engine, pair.dockerd):
        listed = side.run("events", "--filter", "type=network", "--filter", "network=vs-ev-conn", "--since", since,
                          "--until", until, "--format", "{{.Action}} {{.Actor.ID}} {{json .Actor.Attributes}}")
        lines = listed.stdout.splitlines()
        net_ids[side.name] = {line.split()[1] for line in lines}
        outputs.append("".join(line.split()[0] + " " + line.split()[2].replace(ids[side.name], "CTR") + "\n"
                               for line in lines))
    attrs = '{"container":"CTR","name":"vs-ev-conn","type":"bridge"}'
    expected = "".join(f"{action} {attrs}\n" for action in (
        "connect", "disconnect", "disconnect", "connect", "disconnect", "disconnect", "connect", "disconnect"))
    expected = f'create {{"name":"vs-ev-conn","type":"bridge"}}\n{expected}destroy {{"name":"vs-ev-conn","type":"bridge"}}\n'
    assert outputs[0] == outputs[1] == expected, outputs
    assert all(len(found) == 1 for found in net_ids.values()), net_ids  # one network id throughout


def test_commit_and_import_change_healthcheck(pair: Pair, tmp_path: Path) -> None:
    """`commit --change 'HEALTHCHECK …'` and `import --change`: dockerd records the check
    (engine refused the instruction), with the Dockerfile parser's errors; a container of
    the image runs that check."""
    pair.setup("run", "--name", "vs-hc-change", "busybox", "true")
    recorded = {
        "HEALTHCHECK --interval=5s CMD true": '{"Test":["CMD-SHELL","true"],"Interval":5000000000}',
        "HEALTHCHECK NONE": '{"Test":["NONE"]}',
        'healthcheck cmd ["cat", "/x y"]': '{"Test":["CMD","cat","/x y"]}',
        "HEALTHCHECK --timeout=1m30s --start-period=1.5s --retries=4 --interval= CMD echo hi":
            '{"Test":["CMD-SHELL","echo hi"],"Timeout":90000000000,"StartPeriod":1500000000,"Retries":4}',
    }
    refused = {
        "HEALTHCHECK": "HEALTHCHECK requires at least one argument",
        "HEALTHCHECK CMD-SHELL true": 'Unknown type "CMD-SHELL" in HEALTHCHECK (try CMD)',
        "HEALTHCHECK CMD": "Missing command after HEALTHCHECK CMD",
        "HEALTHCHECK NONE x": "HEALTHCHECK NONE takes no arguments",
        "HEALTHCHECK --bogus=1 CMD true": "Unknown flag: bogus",
        "HEALTHCHECK --interval 5s CMD true": "Missing a value on flag: interval",
        "HEALTHCHECK --interval=5 CMD true": 'time: missing unit in duration "5"',
        "HEALTHCHECK --interval=0s CMD true": 'Interval "interval" cannot be less than 1ms',
        "HEALTHCHECK --retries=0 CMD true": "--retries must be at least 1 (not 0)",
    }
    try:
        for change, health in recorded.items():
            pair.setup("commit", "--change", change, "vs-hc-change", "vs-hc-change:1")
            ours, theirs = pair.both("image", "inspect", "-f", "{{json .Config.Healthcheck}}", "vs-hc-change:1")
            assert ours.stdout == theirs.stdout == health + "\n", (change, ours.stdout, theirs.stdout)
        for change, words in refused.items():
            ours, theirs = pair.both("commit", "--change", change, "vs-hc-change", "vs-hc-bad:1")
            assert (ours.returncode, ours.stderr) == (theirs.returncode, theirs.stderr) == (
                1, f"Error response from daemon: {words}\n"), (change, ours.stderr, theirs.stderr)
        pair.setup("commit", "--change", "HEALTHCHECK --interval=1s CMD true", "vs-hc-change", "vs-hc-change:1")
        pair.setup("run", "-d", "--name", "vs-hc-changed", "vs-hc-change:1", "sleep", "600")
        import time

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            ours, theirs = pair.both("inspect", "-f", "{{.State.Health.Status}}", "vs-hc-changed")
            if ours.stdout == theirs.stdout == "healthy\n":
                break
            time.sleep(0.5)
        assert ours.stdout == theirs.stdout == "healthy\n"
        archive = tmp_path / "empty.tar"
        subprocess.run(["tar", "-cf", str(archive), "--files-from", "/dev/null"], check=True)
        pair.setup("import", "--change", "HEALTHCHECK --interval=5s CMD true", str(archive), "vs-hc-import:1")
        ours, theirs = pair.both("image", "inspect", "-f", "{{json .Config.Healthcheck}}", "vs-hc-import:1")
        assert ours.stdout == theirs.stdout == '{"Test":["CMD-SHELL","true"],"Interval":5000000000}\n'
    finally:
        pair.both("rm", "-f", "vs-hc-change", "vs-hc-changed")
        pair.both("rmi", "vs-hc-change:1", "vs-hc-import:1")


def test_inspect_size_flag(pair: Pair) -> None:
    """`docker inspect -s CTR`: SizeRw (the writable layer's bytes) and SizeRootFs (with the
    image's), absent without -s (engine gave neither)."""
    pair.setup("run", "-d", "--name", "vs-insp-size", "busybox", "sh", "-c",
               "head -c 100000 /dev/zero > /big; sleep 600")
    try:
        for side in (pair.engine, pair.dockerd):
            deadline = 0
            while True:  # the file is written just after the start
                sized = side.run("inspect", "-s", "-f", "{{.SizeRw}} {{.SizeRootFs}}", "vs-insp-size")
                rw, rootfs = (int(v) for v in sized.stdout.split())
                if rw == 100000 or deadline > 40:
                    break
                deadline += 1
                import time

                time.sleep(0.25)
            assert rw == 100000 and rootfs > 1_000_000 + rw, (side.name, sized.stdout)
        ours, theirs = pair.both("inspect", "-f", "{{.SizeRw}} {{.SizeRootFs}}", "vs-insp-size")
        assert ours.stdout == theirs.stdout == "<nil> <nil>\n"
    finally:
        pair.both("rm", "-f", "vs-insp-size")
