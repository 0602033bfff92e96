"""The Docker API's HTTP layer and translations, in-process (no daemon): keep-alive,
streaming with backpressure and cancellation, hijacking, errors, versions, and the
create-body translation. Real sockets (a socketpair), real h11 on both ends."""

from __future__ import annotations

import json
import socket as stdsocket
from collections.abc import Awaitable, Callable

import h11
import pytest
import trio

from engine.dockerapi.routes.containers import create_spec
from engine.dockerapi.server import MAX_API_VERSION, error_response, split_version
from engine.dockerapi.shapes import parse_filters, stdcopy_frame
from engine.errors import InvalidArgument, NotFound
from engine.httpserver import (
    Hijacked,
    HijackResponse,
    Reply,
    Request,
    Response,
    StreamResponse,
    Write,
    serve_connection,
)

Handler = Callable[[Request], Awaitable[Reply]]


async def serving(nursery: trio.Nursery, handle: Handler) -> trio.SocketStream:
    """The client's end of a socketpair whose other end is served by ``handle``."""
    a, b = trio.socket.socketpair(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
    nursery.start_soon(serve_connection, trio.SocketStream(a), handle, error_response)
    return trio.SocketStream(b)


class Client:
    """A minimal HTTP/1.1 client on h11."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT)

    async def request(self, method: str, target: str, body: bytes = b"",
                      headers: list[tuple[str, str]] | None = None) -> None:
        hdrs = [("Host", "docker"), *(headers or [])]
        if body:
            hdrs.append(("Content-Length", str(len(body))))
        await self.stream.send_all(self.h11.send(h11.Request(method=method, target=target, headers=hdrs)))
        if body:
            await self.stream.send_all(self.h11.send(h11.Data(data=body)))
        await self.stream.send_all(self.h11.send(h11.EndOfMessage()))

    async def next_event(self) -> object:
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            self.h11.receive_data(await self.stream.receive_some(65536))

    async def response(self) -> tuple[int, dict[str, str], bytes]:
        head = await self.next_event()
        assert isinstance(head, h11.Response | h11.InformationalResponse), head
        headers = {k.decode().lower(): v.decode() for k, v in head.headers}
        if isinstance(head, h11.InformationalResponse):
            return head.status_code, headers, b""
        body = b""
        while True:
            event = await self.next_event()
            if isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
        self.h11.start_next_cycle()
        return head.status_code, headers, body


async def test_keep_alive_serves_requests_in_turn_and_reads_bodies() -> None:
    seen: list[tuple[str, str, object]] = []

    async def handle(req: Request) -> Reply:
        seen.append((req.method, req.path, await req.json()))
        return Response(200, json.dumps({"n": len(seen)}).encode())

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            client = Client(await serving(nursery, handle))
            await client.request("POST", "/a?x=1", b'{"k": 1}')
            assert (await client.response())[2] == b'{"n": 1}'
            await client.request("GET", "/b")
            assert (await client.response())[2] == b'{"n": 2}'
            await client.stream.aclose()
    assert seen == [("POST", "/a", {"k": 1}), ("GET", "/b", None)]


async def test_a_stream_waits_for_a_slow_reader_and_stops_when_it_leaves() -> None:
    writes = [0]
    finished = trio.Event()

    async def produce(write: Write) -> None:
        try:
            while True:
                await write(b"x" * 65536)
                writes[0] += 1
        finally:
            finished.set()

    async def handle(req: Request) -> Reply:
        return StreamResponse(produce, eager_headers=True)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            client = Client(await serving(nursery, handle))
            await client.request("GET", "/events")
            # not reading: the producer must stall on a full socket (polled until it has, a
            # slow machine fills the buffers later; one that runs ahead fails on the count)
            while True:
                stalled_at = writes[0]
                await trio.sleep(0.2)
                assert writes[0] < 64, "the producer ran ahead of a reader that does not read"
                if stalled_at and writes[0] == stalled_at:
                    break
            await client.stream.aclose()  # the client goes away
            await finished.wait()  # ...and the producer is cancelled


async def test_errors_before_the_first_chunk_get_their_status() -> None:
    async def produce(write: Write) -> None:
        raise NotFound("no such image: nope")

    async def handle(req: Request) -> Reply:
        return StreamResponse(produce)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            client = Client(await serving(nursery, handle))
            await client.request("POST", "/images/create")
            status, headers, body = await client.response()
            assert status == 404
            assert json.loads(body) == {"message": "No such image: nope"}
            await client.stream.aclose()


async def test_hijack_switches_protocols_and_passes_raw_bytes() -> None:
    async def talk(conn: Hijacked) -> None:
        data = await conn.receive_some()
        await conn.send_all(stdcopy_frame("stdout", data.upper()))

    async def handle(req: Request) -> Reply:
        await req.json()
        return HijackResponse(talk, content_type="application/vnd.docker.multiplexed-stream")

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            client = Client(await serving(nursery, handle))
            await client.request("POST", "/exec/x/start", b"{}", [("Connection", "Upgrade"), ("Upgrade", "tcp")])
            status, headers, _ = await client.response()
            assert status == 101
            assert headers["upgrade"] == "tcp"
            await client.stream.send_all(b"ping")
            received = b""
            while len(received) < 12:
                chunk = await client.stream.receive_some(100)
                assert chunk
                received += chunk
            assert received == b"\x01\x00\x00\x00\x00\x00\x00\x04PING"
            assert await client.stream.receive_some(100) == b""  # closed when talk returned


async def test_garbage_gets_400_and_the_server_goes_on() -> None:
    async def handle(req: Request) -> Reply:
        return Response(200, b"{}")

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            stream = await serving(nursery, handle)
            await stream.send_all(b"NOT HTTP AT ALL\r\n\r\n")
            reply = b""
            while chunk := await stream.receive_some(1000):
                reply += chunk
            assert reply.startswith(b"HTTP/1.1 400")
            # another connection is served as usual
            client = Client(await serving(nursery, handle))
            await client.request("GET", "/_ping")
            assert (await client.response())[0] == 200
            await client.stream.aclose()


def test_versions_are_negotiated_in_the_path() -> None:
    assert split_version("/v1.41/containers/json") == ((1, 41), "/containers/json")
    assert split_version("/containers/json") == (MAX_API_VERSION, "/containers/json")
    with pytest.raises(InvalidArgument, match="too new. Maximum supported API version is 1.47"):
        split_version("/v1.99/info")
    with pytest.raises(InvalidArgument, match="too old"):
        split_version("/v1.12/info")


def test_filters_in_both_of_dockers_forms() -> None:
    assert parse_filters('{"label": {"a=b": true, "off": false}}') == {"label": ["a=b"]}
    assert parse_filters('{"status": ["running", "exited"]}') == {"status": ["running", "exited"]}
    with pytest.raises(InvalidArgument):
        parse_filters("[1]")


def test_create_body_maps_what_engine_supports_and_names_what_it_does_not() -> None:
    spec = create_spec({
        "Image": "busybox", "Cmd": ["sh"], "Env": ["A=1"], "Labels": {"k": "v"}, "StopTimeout": 3,
        "ExposedPorts": {"80/tcp": {}}, "AttachStdout": True,
        "HostConfig": {
            "Binds": ["/src:/dst:ro"], "PortBindings": {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8080"}]},
            "RestartPolicy": {"Name": "on-failure", "MaximumRetryCount": 2}, "Memory": 1 << 26,
            "NanoCpus": 500_000_000, "PidsLimit": 0, "NetworkMode": "default", "LogConfig": {"Type": "", "Config": {}},
            "Mounts": [{"Type": "tmpfs", "Target": "/run", "TmpfsOptions": {"SizeBytes": 1024}}],
            "Privileged": False, "ShmSize": 0,
        },
        "NetworkingConfig": {"EndpointsConfig": {"appnet": {"Aliases": ["db"]}}},
    }, "web", "")
    assert spec.publish == ["127.0.0.1:8080:80/tcp"]
    assert spec.restart == "on-failure:2"
    assert spec.volumes == ["/src:/dst:ro"]
    assert spec.tmpfs == []  # a tmpfs of HostConfig.Mounts is a --mount (inspect tells them apart)
    assert spec.mounts == ["type=tmpfs,dst=/run,tmpfs-size=1024"]
    assert (spec.memory, spec.cpus, spec.pids_limit, spec.stop_timeout) == (1 << 26, 0.5, None, 3)
    assert (spec.network, spec.network_aliases, spec.name) == ("appnet", ["db"], "web")
    for body, field in [
        ({"Image": "b", "HostConfig": {"BlkioWeight": 300}}, "HostConfig.BlkioWeight"),
        ({"Image": "b", "HostConfig": {"Isolation": "hyperv"}}, "HostConfig.Isolation"),
        ({"Image": "b", "Healthcheck": {"Test": ["CMD"]}}, "Config.Healthcheck.Test"),
        ({"Image": "b", "Healthcheck": {"Test": ["NONE"], "Interval": 1.5}}, "Config.Healthcheck.Interval"),
        ({"Image": "b", "HostConfig": {"Mounts": [{"Type": "npipe", "Target": "/d"}]}},
         "HostConfig.Mounts[0].Type"),
        ({"Image": "b", "HostConfig": {"Mounts": ["/d"]}}, "HostConfig.Mounts[0]"),
        ({"Image": "b", "HostConfig": {"Mounts": {"Type": "volume"}}}, "HostConfig.Mounts"),
        ({"Image": "b", "HostConfig": {"Mounts": [{"Type": "volume", "Target": "/d", "VolumeOptions": [1]}]}},
         "HostConfig.Mounts[0].VolumeOptions"),
        ({"Image": "b", "Volumes": ["/d"]}, "Config.Volumes"),
        ({"Image": "b", "HostConfig": {"Mounts": [{"Type": "volume", "Target": "/d",
                                                    "VolumeOptions": {"Subpath": "x"}}]}},
         "HostConfig.Mounts[0].VolumeOptions.Subpath"),
    ]:
        with pytest.raises(InvalidArgument, match=field.replace("[", r"\[").replace("]", r"\]")):
            create_spec(body, "", "")
    checked = create_spec({"Image": "b", "Tty": True, "OpenStdin": True, "StdinOnce": True, "Healthcheck": {
        "Test": ["CMD", "cat", "/tmp/a b"], "Interval": 2_000_000_000, "Timeout": 500_000_000,
        "StartPeriod": 0, "Retries": 4}}, "", "")
    assert (checked.tty, checked.open_stdin, checked.stdin_once) == (True, True, True)
    assert checked.health_test == ["CMD", "cat", "/tmp/a b"]  # run without a shell, as docker does
    assert (checked.health_interval, checked.health_timeout, checked.health_start_period,
            checked.health_retries) == (2.0, 0.5, None, 4)
    assert create_spec({"Image": "b", "Healthcheck": {"Test": ["NONE"]}}, "", "").no_healthcheck
    volumes = create_spec({
        "Image": "b", "Volumes": {"/anon": {}, "/data": {}, "/t": {}},
        "HostConfig": {"Binds": ["data:/data:ro"], "Tmpfs": {"/t": ""}, "VolumesFrom": ["other:ro"], "Mounts": [
            {"Type": "volume", "Source": "cache", "Target": "/cache", "ReadOnly": True,
             "VolumeOptions": {"NoCopy": True, "Labels": {"a": "1"},
                               "DriverConfig": {"Name": "local", "Options": {"o": "x,y"}}}},
            {"Type": "volume", "Target": "/scratch"}]}}, "", "")
    # the explicit bind and tmpfs win over Config.Volumes' /data and /t; /anon is anonymous
    assert volumes.volumes == ["data:/data:ro", "/anon"]
    assert volumes.mounts == [
        'type=volume,dst=/cache,src=cache,readonly,volume-nocopy=true,volume-label=a=1,volume-driver=local,'
        '"volume-opt=o=x,y"', "type=volume,dst=/scratch"]
    assert volumes.volumes_from == ["other:ro"]
    assert create_spec({"Image": "b", "Healthcheck": {"Test": ["CMD-SHELL", "test -f /x"]}}, "", "").health_test == [
        "CMD-SHELL", "test -f /x"]
