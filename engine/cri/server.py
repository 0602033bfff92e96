"""The CRI's gRPC server: grpc.aio on a unix socket, in a thread with its own asyncio loop.

``serve_cri`` (a trio task, started by the daemon) starts the thread, waits until the socket
listens, and stops the server when the daemon stops. Each RPC of the generated servicers
that engine implements is routed through ``TrioPortal.call`` to a handler of
``RuntimeHandlers``/``ImageHandlers`` (trio code); the rest answer UNIMPLEMENTED, grpcio's
default. Engine errors become gRPC status codes (``STATUS_FOR_CODE``).

The services are registered from the proto's descriptor (``add_service``) rather than by
the generated ``add_*_to_server``, so that a request that does not parse is answered
INVALID_ARGUMENT naming the message, instead of grpcio's UNKNOWN with a logged traceback.
Unknown fields parse (proto3: a newer kubelet's additions are ignored, as containerd does);
a message over ``MAX_MESSAGE`` is refused by grpcio itself with RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import grpc
import trio

from engine.cri.bridge import TrioPortal
from engine.cri.gen import api_pb2 as pb
from engine.cri.gen import api_pb2_grpc
from engine.errors import ConfigError, EngineError, InternalError
from engine.supervisor.app import App

log = logging.getLogger("engine.cri")

STARTUP_TIMEOUT = 30.0  # seconds for grpcio to bind the socket
STOP_GRACE = 2.0  # seconds in-flight calls get when the daemon stops
MAX_MESSAGE = 16 * 1024 * 1024  # kubelet sends and expects up to 16 MiB (ListContainers on big nodes)

STATUS_FOR_CODE = {
    "not_found": grpc.StatusCode.NOT_FOUND,
    "invalid_argument": grpc.StatusCode.INVALID_ARGUMENT,
    "config_error": grpc.StatusCode.INVALID_ARGUMENT,
    "already_exists": grpc.StatusCode.ALREADY_EXISTS,
    "conflict": grpc.StatusCode.FAILED_PRECONDITION,
    "unavailable": grpc.StatusCode.UNAVAILABLE,
    "permission_denied": grpc.StatusCode.PERMISSION_DENIED,
    "resource_exhausted": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "timeout": grpc.StatusCode.DEADLINE_EXCEEDED,
    "cancelled": grpc.StatusCode.CANCELLED,
    "not_implemented": grpc.StatusCode.UNIMPLEMENTED,
}


def socket_path(address: str) -> Path:
    """``unix:///run/engine/cri.sock`` (or a bare absolute path) -> the path."""
    path = address.removeprefix("unix://")
    if not path.startswith("/"):
        raise ConfigError(f"invalid cri-socket {address!r}: use unix:///ABSOLUTE/PATH")
    return Path(path)


def status_for(error: EngineError) -> grpc.StatusCode:
    return STATUS_FOR_CODE.get(error.code, grpc.StatusCode.UNKNOWN)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


Handler = Callable[[Any], Awaitable[Any]]


@attrs.frozen
class Undecodable:
    """What a request that is not a valid protobuf of its type deserializes to: the method
    answers INVALID_ARGUMENT with this instead of running."""

    message_type: str
    error: str


def lenient_parser(message_class: Any) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return message_class.FromString(data)
        except Exception as e:  # DecodeError, or a nesting too deep for the parser
            return Undecodable(message_class.__name__, str(e) or type(e).__name__)

    return parse


def add_service(server: Any, service_name: str, servicer: object) -> None:
    """Register ``servicer``'s methods for ``runtime.v1.<service_name>`` (what the generated
    ``add_<service>Servicer_to_server`` does, with ``lenient_parser`` for requests)."""
    service = pb.DESCRIPTOR.services_by_name[service_name]
    handlers = {}
    for method in service.methods:
        request_class = getattr(pb, method.input_type.name)
        response_class = getattr(pb, method.output_type.name)
        make = (grpc.unary_stream_rpc_method_handler if method.server_streaming
                else grpc.unary_unary_rpc_method_handler)
        handlers[method.name] = make(getattr(servicer, method.name),
                                     request_deserializer=lenient_parser(request_class),
                                     response_serializer=response_class.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))


def servicer_class(base: type, handlers: object, portal: TrioPortal) -> type:
    """A subclass of the generated ``base`` servicer whose RPCs call ``handlers``'
    snake_case methods on trio; RPCs without a handler keep the UNIMPLEMENTED default."""
    methods: dict[str, Any] = {}
    for name in dir(base):
        if name.startswith("_") or not name[0].isupper():
            continue
        handler = getattr(handlers, _snake(name), None)
        methods[name] = _rpc(name, handler, portal) if handler is not None else _unimplemented(name)
    return type(f"Engine{base.__name__}", (base,), methods)


def _unimplemented(name: str) -> Any:
    async def method(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{name} is not implemented by engine yet")

    method.__name__ = name
    return method


def _rpc(name: str, handler: Handler, portal: TrioPortal) -> Any:
    async def method(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"{name}: the request is not a valid {request.message_type} "
                                f"message: {request.error}")
        try:
            return await portal.call(handler, request)
        except EngineError as e:
            log.debug("CRI %s failed: %s", name, e)
            await context.abort(status_for(e), str(e))
        except Exception as e:
            log.error("CRI %s: internal error", name, exc_info=e)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {name}: {e}")

    method.__name__ = name
    return method


class _GrpcThread:
    """The thread that owns the asyncio loop and grpcio's server."""

    def __init__(self, path: Path, portal: TrioPortal, servicers: list[tuple[str, object]]) -> None:
        self.path = path
        self.portal = portal
        self.servicers = servicers  # (service name, servicer instance)
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop_event: asyncio.Event | None = None
        self.thread = threading.Thread(target=self._main, name="engine-cri-grpc", daemon=True)

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as e:  # reported to the trio side through self.error
            self.error = e
        finally:
            self.ready.set()

    async def _serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.stop_event = asyncio.Event()
        server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
        ])
        for service_name, servicer in self.servicers:
            add_service(server, service_name, servicer)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)
        if server.add_insecure_port(f"unix:{self.path}") == 0:
            raise ConfigError(f"cannot listen on {self.path} for the CRI")
        await server.start()
        os.chmod(self.path, 0o660)
        self.ready.set()
        try:
            await self.stop_event.wait()
        finally:
            await server.stop(STOP_GRACE)

    def stop(self) -> None:
        loop, event = self.loop, self.stop_event
        if loop is not None and event is not None:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:
                pass  # its loop is gone already


async def serve_cri(app: App, address: str, *, streaming: Any = None,
                    task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the CRI on ``address`` until cancelled; ``task_status.started(path)``.
    ``streaming`` (engine.cri.streaming.server.StreamingServer) hands out the URLs of Exec,
    Attach and PortForward."""
    from engine.cri.images import ImageHandlers
    from engine.cri.pods import RuntimeHandlers

    path = socket_path(address)
    runtime = RuntimeHandlers(app)
    runtime.streaming = streaming
    images = ImageHandlers(app)
    await runtime.open()
    async with trio.open_nursery() as nursery:
        portal = TrioPortal(trio.lowlevel.current_trio_token(), nursery)
        servicers: list[tuple[str, object]] = [
            ("RuntimeService", servicer_class(api_pb2_grpc.RuntimeServiceServicer, runtime, portal)()),
            ("ImageService", servicer_class(api_pb2_grpc.ImageServiceServicer, images, portal)()),
        ]
        grpc_thread = _GrpcThread(path, portal, servicers)
        grpc_thread.thread.start()
        try:
            with trio.fail_after(STARTUP_TIMEOUT):
                await trio.to_thread.run_sync(grpc_thread.ready.wait, abandon_on_cancel=True)
            if grpc_thread.error is not None:
                err = grpc_thread.error
                raise err if isinstance(err, EngineError) else InternalError(
                    f"the CRI server could not start on {path}: {err}")
            log.info("CRI listening", extra={"socket": str(path)})
            task_status.started(path)
            await trio.sleep_forever()
        finally:
            grpc_thread.stop()
            with trio.CancelScope(shield=True), trio.move_on_after(STOP_GRACE + 5):
                await trio.to_thread.run_sync(grpc_thread.thread.join)
            nursery.cancel_scope.cancel()
            path.unlink(missing_ok=True)
