"""What a streaming URL stands for: the CRI request, resolved when the URL was handed out
(kept in the token cache until the client comes, at most ``TOKEN_TTL``)."""

from __future__ import annotations

import attrs


@attrs.frozen
class ExecTarget:
    container_id: str
    cmd: list[str]
    tty: bool = False
    stdin: bool = False
    stdout: bool = True
    stderr: bool = True


@attrs.frozen
class AttachTarget:
    container_id: str
    tty: bool = False
    stdin: bool = False
    stdout: bool = True
    stderr: bool = True
    stdin_once: bool = False  # the container's: the client's stdin EOF closes the container's


@attrs.frozen
class PortForwardTarget:
    sandbox_id: str
    netns: str  # the pod's network namespace file; "" for a host-network pod
    ports: list[int] = attrs.field(factory=list)  # the CRI request's (WebSocket channels)


Target = ExecTarget | AttachTarget | PortForwardTarget
KIND_OF = {ExecTarget: "exec", AttachTarget: "attach", PortForwardTarget: "portforward"}
