"""The CRI RuntimeService: runtime info, pod sandboxes and their containers.

A pod sandbox is an engine container whose process (catatonit in pause mode, or the
``--cri-pause-image``'s) holds the pod's IPC, UTS and (with PID sharing) PID namespaces;
the pod's network namespace is a bind-mounted file (``engine.network.netns``) wired up by
the CNI configuration kubelet's way (``engine.cri.cni``). The pod's containers are engine
containers that join those namespaces by path. Every change to any of them goes through
the container's actor, as engctl's do; the CRI adds only its records (``records``).

Stop and remove of a sandbox are idempotent; a half-made sandbox is undone before
RunPodSandbox reports its error.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

import trio

import engine
from engine.actors import commands as c
from engine.actors.container import ContainerActor
from engine.actors.model import BindMount, ContainerConfig, new_container_id
from engine.actors.state import ContainerState
from engine.actors.verbs import CFS_PERIOD
from engine.cri import cni
from engine.cri.gen import api_pb2 as pb
from engine.cri.records import ContainerRecord, RecordStore, SandboxRecord
from engine.errors import Conflict, EngineError, InvalidArgument, NotFound, Unavailable
from engine.network import etc_files, netns
from engine.network.service import EXTERNAL
from engine.oci.propagation import check_sources
from engine.supervisor.app import App
from engine.supervisor.containers import ContainerSupervisor

log = logging.getLogger("engine.cri")

CRI_VERSION = "0.1.0"  # the version kubelet's CRI client speaks
RUNTIME_API_VERSION = "v1"
CATATONIT = Path("/usr/bin/catatonit")
INFRA_BINARY = "/catatonit"
SANDBOX_LABEL = "io.engine.cri.sandbox"  # on the engine containers: which pod
KIND_LABEL = "io.engine.cri.kind"  # "sandbox" | "container"
SANDBOX_STOP_GRACE = 2.0  # seconds the infra process gets (it holds nothing)
REOPEN_WAIT = 5.0  # seconds conmon gets to reopen a rotated log
EXEC_OUTPUT_MAX = 16 * 1024 * 1024  # bytes of ExecSync output kept per stream
NS_MODE = pb.NamespaceMode  # POD=0, CONTAINER=1, NODE=2, TARGET=3
# Kubernetes' own cap on a pod's annotations (TotalAnnotationSizeLimitB); the same for labels.
# Anything bigger comes from a broken client, and would be written into several files.
METADATA_MAX = 256 * 1024
# Linux refuses an execve whose arguments and environment pass ~2 MiB (ARG_MAX); say so early.
COMMAND_MAX = 1024 * 1024

_STATE_OF: dict[ContainerState, Any] = {
    ContainerState.CREATING: pb.CONTAINER_CREATED,
    ContainerState.CREATED: pb.CONTAINER_CREATED,
    ContainerState.RUNNING: pb.CONTAINER_RUNNING,
    ContainerState.PAUSED: pb.CONTAINER_RUNNING,
    ContainerState.RESTARTING: pb.CONTAINER_EXITED,
    ContainerState.EXITED: pb.CONTAINER_EXITED,
    ContainerState.REMOVING: pb.CONTAINER_EXITED,
    ContainerState.DEAD: pb.CONTAINER_EXITED,
}


def _ns(ts: float) -> int:
    return int(ts * 1e9) if ts else 0


def _safe(text: str) -> str:
    """A piece of an engine container name (``[a-zA-Z0-9][a-zA-Z0-9_.-]*``)."""
    return "".join(ch if ch.isalnum() or ch in "_.-" else "-" for ch in text) or "x"


def _matches(wanted: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in wanted.items())


def _selected(f: Any, record_id: str, labels: dict[str, str], *, sandbox_id: str | None = None,
              state: Any = None) -> bool:
    """Whether a record passes a List* request's filter (None: no filter): its id and pod
    sandbox id by prefix, its state, every selected label. ``sandbox_id`` and ``state`` are
    given only for the filters that have those fields."""
    if f is None:
        return True
    if f.id and not record_id.startswith(f.id):
        return False
    if sandbox_id is not None and f.pod_sandbox_id and not sandbox_id.startswith(f.pod_sandbox_id):
        return False
    if state is not None and f.HasField("state") and f.state.state != state:
        return False
    return _matches(dict(f.label_selector), labels)


def check_metadata_size(rpc: str, **maps: Any) -> None:
    """Labels and annotations of a pod or container stay under ``METADATA_MAX`` bytes each."""
    for field, mapping in maps.items():
        size = sum(len(k.encode()) + len(v.encode()) for k, v in mapping.items())
        if size > METADATA_MAX:
            raise InvalidArgument(f"{rpc}: {field} take {size} bytes; at most {METADATA_MAX} "
                                  "are accepted")


def check_command_size(rpc: str, config: pb.ContainerConfig) -> None:
    size = sum(len(a.encode()) + 1 for a in [*config.command, *config.args])
    size += sum(len(kv.key.encode()) + len(kv.value.encode()) + 2 for kv in config.envs)
    if size > COMMAND_MAX:
        raise InvalidArgument(f"{rpc}: command, args and envs take {size} bytes; at most "
                              f"{COMMAND_MAX} are accepted")


def _by_prefix(items: dict[str, Any], ref: str, kind: str) -> Any:
    if not ref:
        raise InvalidArgument(f"a {kind} id is required")
    if ref in items:
        return items[ref]
    found = [v for k, v in items.items() if k.startswith(ref)] if ref else []
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise InvalidArgument(f"{kind} id prefix {ref!r} is ambiguous")
    raise NotFound(f"no such {kind}: {ref!r}")


_PROPAGATION = {
    pb.PROPAGATION_PRIVATE: "rprivate",
    pb.PROPAGATION_HOST_TO_CONTAINER: "rslave",
    pb.PROPAGATION_BIDIRECTIONAL: "rshared",
}


def _propagation(mount: pb.Mount) -> str:
    try:
        return _PROPAGATION[mount.propagation]
    except KeyError:
        raise InvalidArgument(f"CreateContainer: mount {mount.container_path!r} has an unknown "
                              f"propagation {mount.propagation}") from None


def seccomp_profile(security: Any) -> str:
    """The container's seccomp profile as ContainerConfig.seccomp_profile names it. The CRI's
    ``seccomp`` (SecurityProfile) wins over the older ``seccomp_profile_path`` string
    (``runtime/default``, ``docker/default``, ``unconfined``, ``localhost/<path>``); with
    neither, the CRI's default is unconfined (kubelet asks for RuntimeDefault explicitly)."""
    if security.HasField("seccomp"):
        kind = security.seccomp.profile_type
        if kind == pb.SecurityProfile.RuntimeDefault:
            return ""
        if kind == pb.SecurityProfile.Localhost:
            return _localhost_profile(security.seccomp.localhost_ref)
        return "unconfined"
    path = security.seccomp_profile_path
    if not path or path == "unconfined":
        return "unconfined"
    if path in ("runtime/default", "docker/default"):
        return ""
    if path.startswith("localhost/"):
        return _localhost_profile(path.removeprefix("localhost/"))
    raise InvalidArgument(f"unknown seccomp profile {path!r}: use runtime/default, unconfined "
                          "or localhost/<absolute path>")


def _localhost_profile(path: str) -> str:
    if not path.startswith("/"):
        raise InvalidArgument(f"seccomp profile {path!r} must be an absolute path on the host")
    return path


def linux_resources(config: ContainerConfig) -> pb.LinuxContainerResources:
    """The limits the container runs with now: its config, which updates change (CPU quota
    as CreateContainer gave it until an update sets one)."""
    cpu = config.spec_patch.get("linux", {}).get("resources", {}).get("cpu", {})
    quota, period = cpu.get("quota", 0), cpu.get("period", 0)
    if config.cpus is not None:
        quota, period = int(config.cpus * CFS_PERIOD), CFS_PERIOD
    return pb.LinuxContainerResources(
        cpu_period=period, cpu_quota=quota, cpu_shares=config.cpu_shares or 0,
        memory_limit_in_bytes=config.memory or 0, cpuset_cpus=config.cpuset_cpus,
        cpuset_mems=config.cpuset_mems,
        oom_score_adj=config.spec_patch.get("process", {}).get("oomScoreAdj", 0))


def _own_oom_score_adj() -> int:
    try:
        return int(Path("/proc/self/oom_score_adj").read_text())
    except (OSError, ValueError):
        return 0


class RuntimeHandlers:
    """One method per RuntimeService RPC (snake_case), each taking the request message."""

    def __init__(self, app: App) -> None:
        self.app = app
        root = app.layout.root / "cri"
        self.sandboxes = RecordStore(root / "sandboxes", SandboxRecord)
        self.containers = RecordStore(root / "containers", ContainerRecord)
        self.run_dir = app.layout.run_root / "cri"
        self.netns_dir = self.run_dir / "netns"
        self._locks: dict[str, trio.Lock] = {}
        self.cni = cni.CNISettings(Path(app.config.cni_conf_dir),
                                   tuple(Path(d) for d in app.config.cni_bin_dirs))

    async def open(self) -> None:
        await trio.to_thread.run_sync(self.sandboxes.load)
        await trio.to_thread.run_sync(self.containers.load)
        await self._reconcile()

    async def _reconcile(self) -> None:
        """After a restart (a SIGKILL included) the records on disk and the engine's
        containers (adopted by then) agree again. A record is written before its engine
        container is created and deleted after it is removed, so a crash in between leaves a
        record without a container (its create was discarded as half-made): a container's
        record goes, a sandbox's stays NOTREADY (its network is released by StopPodSandbox).
        Engine containers labelled as the CRI's but with no record are removed: nobody could
        reach them through the CRI any more."""
        for record in list(self.containers.items.values()):
            if self._actor(record.id) is None:
                log.warning("CRI container %s has no engine container any more: forgotten",
                            record.id[:12])
                await trio.to_thread.run_sync(self.containers.delete, record.id)
        for record in list(self.sandboxes.items.values()):
            if record.ready and self._actor(record.id) is None:
                record.ready = False
                await self._save(self.sandboxes, record)
        known = set(self.sandboxes.items) | set(self.containers.items)
        for actor in self.supervisor.all():
            if KIND_LABEL in actor.config.labels and actor.config.id not in known:
                log.warning("removing engine container %s: made for the CRI, but no CRI record "
                            "names it", actor.config.id[:12])
                try:
                    with trio.fail_after(60):
                        await actor.call(c.Remove(force=True))
                except (EngineError, trio.TooSlowError) as e:
                    log.error("cannot remove orphaned CRI container %s: %s", actor.config.id[:12], e)

    def _lock(self, sandbox_id: str) -> trio.Lock:
        return self._locks.setdefault(sandbox_id, trio.Lock())

    @property
    def supervisor(self) -> ContainerSupervisor:
        return self.app.services.require_containers()

    def _actor(self, container_id: str) -> ContainerActor | None:
        try:
            return self.supervisor.get(container_id)
        except NotFound:
            return None

    async def _save(self, store: RecordStore, record: Any) -> None:
        await trio.to_thread.run_sync(store.save, record)

    # --- runtime info ---------------------------------------------------------------------

    async def version(self, request: pb.VersionRequest) -> pb.VersionResponse:
        return pb.VersionResponse(version=CRI_VERSION, runtime_name="engine",
                                  runtime_version=engine.__version__,
                                  runtime_api_version=RUNTIME_API_VERSION)

    async def status(self, request: pb.StatusRequest) -> pb.StatusResponse:
        runtime_error = ""
        try:
            self.app.runtime()
            self.supervisor  # noqa: B018 - raises while containers are unavailable
            self.app.services.require_images()
        except EngineError as e:
            runtime_error = str(e)
        network_error = await cni.network_ready(self.cni)
        conditions = [
            pb.RuntimeCondition(type="RuntimeReady", status=not runtime_error,
                                reason="RuntimeNotReady" if runtime_error else "",
                                message=runtime_error),
            pb.RuntimeCondition(type="NetworkReady", status=not network_error,
                                reason="NetworkPluginNotReady" if network_error else "",
                                message=network_error),
        ]
        response = pb.StatusResponse(status=pb.RuntimeStatus(conditions=conditions))
        if request.verbose:
            response.info["config"] = (
                f'{{"cniConfDir": "{self.cni.conf_dir}", "cniBinDirs": '
                f'{[str(d) for d in self.cni.bin_dirs]!r}, "defaultRuntime": "{self.app.config.default_runtime}"}}'
            ).replace("'", '"')
        return response

    async def runtime_config(self, request: pb.RuntimeConfigRequest) -> pb.RuntimeConfigResponse:
        return pb.RuntimeConfigResponse(linux=pb.LinuxRuntimeConfiguration(cgroup_driver=pb.CGROUPFS))

    async def update_runtime_config(self, request: pb.UpdateRuntimeConfigRequest,
                                    ) -> pb.UpdateRuntimeConfigResponse:
        return pb.UpdateRuntimeConfigResponse()  # the pod CIDR is the CNI config's business

    # --- pod sandboxes --------------------------------------------------------------------

    def _runtime_name(self, handler: str) -> str:
        name = handler or self.app.config.default_runtime
        self.app.runtime(name)  # unknown or unusable: a clear error now
        return name

    async def run_pod_sandbox(self, request: pb.RunPodSandboxRequest) -> pb.RunPodSandboxResponse:
        config = request.config
        meta = config.metadata
        if not meta.name or not meta.namespace or not meta.uid:
            raise InvalidArgument("RunPodSandbox: metadata name, namespace and uid are required")
        check_metadata_size("RunPodSandbox", labels=config.labels, annotations=config.annotations)
        options = config.linux.security_context.namespace_options
        record = SandboxRecord(
            id=new_container_id(), name=meta.name, uid=meta.uid, namespace=meta.namespace,
            attempt=meta.attempt, created_at=time.time_ns(), labels=dict(config.labels),
            annotations=dict(config.annotations),
            runtime_handler=request.runtime_handler, log_directory=config.log_directory,
            cgroup_parent=config.linux.cgroup_parent, network_mode=options.network,
            ipc_mode=options.ipc, pid_mode=options.pid,
        )
        runtime = self._runtime_name(request.runtime_handler)
        host_network = options.network == NS_MODE.NODE
        record.hostname = config.hostname or (socket.gethostname() if host_network else "")
        record.hostname = record.hostname or meta.name[:63]
        record.port_mappings = [
            {"hostPort": p.host_port, "containerPort": p.container_port,
             "protocol": pb.Protocol.Name(p.protocol).lower(), "hostIP": p.host_ip}
            for p in config.port_mappings if p.host_port
        ]
        async with self._lock(record.id):
            try:
                await self._write_etc_files(record, config.dns_config, host_network)
                if not host_network:
                    # Write-ahead: the record names the namespace and the CNI config before
                    # either is used, so that after a crash in between, StopPodSandbox of
                    # the (NOTREADY) pod still releases what was made (CNI DEL is idempotent).
                    record.netns = str(netns.path_for(self.netns_dir, record.id))
                    record.cni_conflist = await trio.to_thread.run_sync(cni.load_conflist, self.cni.conf_dir)
                    await self._save(self.sandboxes, record)
                    ns = await netns.create(self.netns_dir, record.id)
                    record.cni_conflist, record.cni_result = await cni.add(
                        self.cni, record.id, ns, record.port_mappings, record.cni_conflist)
                    record.ips = cni.first_ips(record.cni_result)
                    await self._write_etc_files(record, config.dns_config, host_network)
                await self._save(self.sandboxes, record)
                actor = await self.supervisor.create(
                    await self._infra_config(record, config, runtime))
                await actor.call(c.Start())
            except BaseException:
                with trio.CancelScope(shield=True), trio.move_on_after(60):
                    await self._destroy_sandbox(record)
                raise
        return pb.RunPodSandboxResponse(pod_sandbox_id=record.id)

    async def _write_etc_files(self, record: SandboxRecord, dns: pb.DNSConfig, host_network: bool) -> None:
        etc_dir = self.run_dir / "sandboxes" / record.id
        record.etc_dir = str(etc_dir)
        await etc_files.write_etc_files(
            etc_dir, hostname=record.hostname, ips=list(record.ips[:1]),
            dns=list(dns.servers), dns_search=list(dns.searches), dns_options=list(dns.options),
            network_mode="host" if host_network else "bridge",
        )

    def _etc_binds(self, record: SandboxRecord, taken: set[str]) -> list[BindMount]:
        etc = Path(record.etc_dir)
        files = (("hosts", "/etc/hosts"), ("hostname", "/etc/hostname"), ("resolv.conf", "/etc/resolv.conf"))
        return [BindMount(str(etc / name), dest) for name, dest in files if dest not in taken]

    def _cgroups_path(self, record: SandboxRecord, container_id: str) -> str:
        if not record.cgroup_parent:
            return ""
        return f"{record.cgroup_parent.rstrip('/')}/{container_id}"

    async def _infra_config(self, record: SandboxRecord, config: pb.PodSandboxConfig,
                            runtime: str) -> ContainerConfig:
        namespaces: dict[str, str] = {"network": record.netns or "host"}
        if record.network_mode == NS_MODE.NODE:
            namespaces["uts"] = "host"
        if record.ipc_mode == NS_MODE.NODE:
            namespaces["ipc"] = "host"
        if record.pid_mode == NS_MODE.NODE:
            namespaces["pid"] = "host"
        image_ref = self.app.config.cri_pause_image
        layers: list[str] = []
        image_id = ""
        binds = self._etc_binds(record, set())
        if image_ref:
            image = self.app.services.require_images().get(image_ref)
            layers, image_id = list(image.diff_ids), image.id
            args = list(image.config.config.entrypoint or []) + list(image.config.config.cmd or [])
        else:
            binds.append(BindMount(str(CATATONIT), INFRA_BINARY, True))
            args = [INFRA_BINARY, "-P"]
        security = config.linux.security_context
        return ContainerConfig(
            id=record.id,
            name=_safe(f"k8s_POD_{record.name}_{record.namespace}_{record.uid}_{record.attempt}"),
            image=image_ref or "catatonit", image_id=image_id, created=time.time(),
            runtime=runtime, args=args, env=["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            hostname=record.hostname if record.network_mode != NS_MODE.NODE else "",
            binds=binds, read_only=False, stop_timeout=SANDBOX_STOP_GRACE,
            labels={**dict(config.labels), KIND_LABEL: "sandbox", SANDBOX_LABEL: record.id},
            network_mode=EXTERNAL, layers=layers, namespaces=namespaces,
            cgroups_path=self._cgroups_path(record, record.id),
            annotations=dict(config.annotations),
            privileged=security.privileged,
            sysctls=dict(config.linux.sysctls),
            seccomp_profile=seccomp_profile(security),
            user=str(security.run_as_user.value) if security.HasField("run_as_user") else "",
        )

    def _sandbox(self, ref: str) -> SandboxRecord:
        return _by_prefix(self.sandboxes.items, ref, "pod sandbox")  # type: ignore[no-any-return]

    async def stop_pod_sandbox(self, request: pb.StopPodSandboxRequest) -> pb.StopPodSandboxResponse:
        try:
            record = self._sandbox(request.pod_sandbox_id)
        except NotFound:
            return pb.StopPodSandboxResponse()  # idempotent: nothing left to stop
        async with self._lock(record.id):
            await self._stop_sandbox(record)
        return pb.StopPodSandboxResponse()

    async def _stop_sandbox(self, record: SandboxRecord) -> None:
        for ctr in [r for r in self.containers.items.values() if r.sandbox_id == record.id]:
            actor = self._actor(ctr.id)
            if actor is not None:
                await actor.call(c.Stop(0.0))
        actor = self._actor(record.id)
        if actor is not None:
            await actor.call(c.Stop(SANDBOX_STOP_GRACE))
        await self._release_network(record)
        record.ready = False
        await self._save(self.sandboxes, record)

    async def _release_network(self, record: SandboxRecord) -> None:
        if record.netns:
            if record.cni_conflist:
                errors = await cni.delete(self.cni, record.id, record.netns, record.cni_conflist,
                                          record.port_mappings, record.cni_result or None)
                if errors:
                    log.warning("pod sandbox %s: CNI DEL: %s", record.id[:12], "; ".join(errors))
                record.cni_conflist = {}
            await netns.delete(self.netns_dir, record.id)

    async def remove_pod_sandbox(self, request: pb.RemovePodSandboxRequest) -> pb.RemovePodSandboxResponse:
        try:
            record = self._sandbox(request.pod_sandbox_id)
        except NotFound:
            return pb.RemovePodSandboxResponse()  # idempotent
        async with self._lock(record.id):
            await self._destroy_sandbox(record)
        self._locks.pop(record.id, None)
        return pb.RemovePodSandboxResponse()

    async def _destroy_sandbox(self, record: SandboxRecord) -> None:
        """Everything of the pod goes: containers, infra, network, files, records."""
        for ctr in [r for r in self.containers.items.values() if r.sandbox_id == record.id]:
            await self._remove_container(ctr)
        actor = self._actor(record.id)
        if actor is not None:
            try:
                await actor.call(c.Remove(force=True))
            except NotFound:
                pass
        await self._release_network(record)
        if record.etc_dir:
            await trio.to_thread.run_sync(_remove_tree_quiet, Path(record.etc_dir))
        await trio.to_thread.run_sync(self.sandboxes.delete, record.id)

    async def pod_sandbox_status(self, request: pb.PodSandboxStatusRequest) -> pb.PodSandboxStatusResponse:
        record = self._sandbox(request.pod_sandbox_id)
        status = pb.PodSandboxStatus(**self._sandbox_fields(record, self._sandbox_state(record)))
        if record.ips:
            status.network.ip = record.ips[0]
            status.network.additional_ips.extend(pb.PodIP(ip=ip) for ip in record.ips[1:])
        opts = status.linux.namespaces.options
        modes: Any = (record.network_mode, record.ipc_mode, record.pid_mode)
        opts.network, opts.ipc, opts.pid = modes
        response = pb.PodSandboxStatusResponse(status=status)
        if request.verbose:
            actor = self._actor(record.id)
            response.info["info"] = f'{{"pid": {actor.status.pid if actor else 0}}}'
        return response

    def _sandbox_fields(self, record: SandboxRecord, state: Any) -> dict[str, Any]:
        """What a PodSandbox (ListPodSandbox) and a PodSandboxStatus both say."""
        return {"id": record.id, "metadata": self._sandbox_meta(record), "state": state,
                "created_at": record.created_at, "labels": record.labels,
                "annotations": record.annotations, "runtime_handler": record.runtime_handler}

    def _sandbox_meta(self, record: SandboxRecord) -> pb.PodSandboxMetadata:
        return pb.PodSandboxMetadata(name=record.name, uid=record.uid, namespace=record.namespace,
                                     attempt=record.attempt)

    def _sandbox_state(self, record: SandboxRecord) -> Any:
        actor = self._actor(record.id)
        running = actor is not None and actor.status.state in (ContainerState.RUNNING, ContainerState.PAUSED)
        return pb.SANDBOX_READY if record.ready and running else pb.SANDBOX_NOTREADY

    async def list_pod_sandbox(self, request: pb.ListPodSandboxRequest) -> pb.ListPodSandboxResponse:
        f = request.filter if request.HasField("filter") else None
        items = []
        for record in list(self.sandboxes.items.values()):
            state = self._sandbox_state(record)
            if _selected(f, record.id, record.labels, state=state):
                items.append(pb.PodSandbox(**self._sandbox_fields(record, state)))
        return pb.ListPodSandboxResponse(items=items)

    # --- containers -----------------------------------------------------------------------

    async def create_container(self, request: pb.CreateContainerRequest) -> pb.CreateContainerResponse:
        sandbox = self._sandbox(request.pod_sandbox_id)
        config = request.config
        if not config.metadata.name:
            raise InvalidArgument("CreateContainer: metadata name is required")
        if not config.image.image:
            raise InvalidArgument("CreateContainer: image is required")
        check_metadata_size("CreateContainer", labels=config.labels, annotations=config.annotations)
        check_command_size("CreateContainer", config)
        infra = self._actor(sandbox.id)
        if infra is None or infra.status.state != ContainerState.RUNNING or not infra.status.pid:
            raise InvalidArgument(f"pod sandbox {sandbox.id[:12]} is not ready: its containers "
                                  "cannot be created")
        images = self.app.services.require_images()
        try:
            image = images.get(config.image.image)
        except NotFound:
            raise NotFound(f"image {config.image.image!r} is not present: pull it first") from None
        container_id = new_container_id()
        engine_config = self._container_config(container_id, sandbox, infra.status.pid, config,
                                               image, request.sandbox_config)
        # containerd's rule: refused now, not silently unpropagated at start
        await trio.to_thread.run_sync(check_sources, [(b.source, b.propagation) for b in engine_config.binds])
        record = ContainerRecord(
            id=container_id, sandbox_id=sandbox.id, name=config.metadata.name,
            attempt=config.metadata.attempt, created_at=time.time_ns(), image=config.image.image,
            image_ref=image.id, labels=dict(config.labels), annotations=dict(config.annotations),
            log_path=engine_config.log_path,
            mounts=[{"container_path": m.container_path, "host_path": m.host_path,
                     "readonly": m.readonly, "propagation": m.propagation} for m in config.mounts],
        )
        await self._save(self.containers, record)
        try:
            await self.supervisor.create(engine_config)
        except BaseException:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self.containers.delete, container_id)
            raise
        return pb.CreateContainerResponse(container_id=container_id)

    def _container_config(self, container_id: str, sandbox: SandboxRecord, infra_pid: int,
                          config: pb.ContainerConfig, image: Any, sandbox_config: pb.PodSandboxConfig,
                          ) -> ContainerConfig:
        from engine.supervisor.bundle import resolve

        linux = config.linux
        security = linux.security_context
        user = ""
        if security.HasField("run_as_user"):
            user = str(security.run_as_user.value)
        elif security.run_as_username:
            user = security.run_as_username
        if security.HasField("run_as_group"):
            if not user:
                raise InvalidArgument("CreateContainer: run_as_group needs run_as_user or run_as_username")
            user += f":{security.run_as_group.value}"
        args, env, workdir, user = resolve(
            image.config, entrypoint=list(config.command) or None, cmd=list(config.args) or None,
            env=[f"{kv.key}={kv.value}" for kv in config.envs], workdir=config.working_dir,
            user=user)
        # the spec's rootfsPropagation follows from these (engine.oci.spec)
        mounts = [BindMount(m.host_path, m.container_path, m.readonly, _propagation(m))
                  for m in config.mounts]
        taken = {m.container_path for m in config.mounts}
        namespaces = self._container_namespaces(sandbox, infra_pid, security.namespace_options)
        patch: dict[str, Any] = {}
        process: dict[str, Any] = {}
        resources = linux.resources
        if resources.oom_score_adj:
            # never below the daemon's own: lowering it needs CAP_SYS_RESOURCE
            process["oomScoreAdj"] = max(resources.oom_score_adj, _own_oom_score_adj())
        if process:
            patch["process"] = process
        linux_patch: dict[str, Any] = {}
        if security.masked_paths:
            linux_patch["maskedPaths"] = list(security.masked_paths)
        if security.readonly_paths:
            linux_patch["readonlyPaths"] = list(security.readonly_paths)
        # shares and cpusets are the config's (UpdateContainerResources changes them there)
        cpu: dict[str, Any] = {k: v for k, v in (("quota", resources.cpu_quota), ("period", resources.cpu_period))
                               if v}
        if cpu:
            linux_patch["resources"] = {"cpu": cpu}
        if linux_patch:
            patch["linux"] = linux_patch
        log_path = ""
        if sandbox.log_directory and config.log_path:
            log_path = str(Path(sandbox.log_directory) / config.log_path)
        seccomp = seccomp_profile(security)
        name = _safe(f"k8s_{config.metadata.name}_{sandbox.name}_{sandbox.namespace}_{sandbox.uid}_"
                     f"{config.metadata.attempt}")
        return ContainerConfig(
            id=container_id, name=name, image=config.image.image, image_id=image.id,
            created=time.time(), runtime=self._runtime_name(sandbox.runtime_handler),
            entrypoint=list(config.command) or None, cmd=list(config.args) or None,
            args=args, env=env, workdir=workdir, user=user,
            hostname=sandbox.hostname if sandbox.network_mode != NS_MODE.NODE else "",
            binds=mounts + self._etc_binds(sandbox, taken),
            read_only=security.readonly_rootfs,
            memory=resources.memory_limit_in_bytes or None,
            labels={**dict(config.labels), KIND_LABEL: "container", SANDBOX_LABEL: sandbox.id},
            network_mode=EXTERNAL, layers=list(image.diff_ids),
            cap_add=list(security.capabilities.add_capabilities),
            cap_drop=list(security.capabilities.drop_capabilities),
            namespaces=namespaces,
            cgroups_path=self._cgroups_path(sandbox, container_id),
            annotations=dict(config.annotations), log_path=log_path,
            privileged=security.privileged, no_new_privileges=security.no_new_privs,
            seccomp_profile=seccomp, spec_patch=patch,
            additional_gids=list(security.supplemental_groups),
            cpu_shares=resources.cpu_shares or None, cpuset_cpus=resources.cpuset_cpus,
            cpuset_mems=resources.cpuset_mems,
            tty=config.tty, open_stdin=config.stdin, stdin_once=config.stdin_once,
        )

    def _container_namespaces(self, sandbox: SandboxRecord, infra_pid: int,
                              options: pb.NamespaceOption) -> dict[str, str]:
        proc = f"/proc/{infra_pid}/ns"
        namespaces = {"network": sandbox.netns or "host"}
        namespaces["uts"] = "host" if sandbox.network_mode == NS_MODE.NODE else f"{proc}/uts"
        namespaces["ipc"] = "host" if options.ipc == NS_MODE.NODE else f"{proc}/ipc"
        if options.pid == NS_MODE.NODE:
            namespaces["pid"] = "host"
        elif options.pid == NS_MODE.POD:
            namespaces["pid"] = f"{proc}/pid"
        elif options.pid == NS_MODE.TARGET:
            target = self._actor(options.target_id)
            if target is None or not target.status.pid:
                raise NotFound(f"target container {options.target_id!r} of the PID namespace is not running")
            namespaces["pid"] = f"/proc/{target.status.pid}/ns/pid"
        return namespaces

    def _container(self, ref: str) -> ContainerRecord:
        return _by_prefix(self.containers.items, ref, "container")  # type: ignore[no-any-return]

    def _require_actor(self, record: ContainerRecord) -> ContainerActor:
        actor = self._actor(record.id)
        if actor is None:
            raise NotFound(f"no such container: {record.id}")
        return actor

    async def start_container(self, request: pb.StartContainerRequest) -> pb.StartContainerResponse:
        record = self._container(request.container_id)
        if record.log_path:
            await trio.to_thread.run_sync(
                lambda: Path(record.log_path).parent.mkdir(parents=True, exist_ok=True))
        await self._require_actor(record).call(c.Start())
        return pb.StartContainerResponse()

    async def stop_container(self, request: pb.StopContainerRequest) -> pb.StopContainerResponse:
        record = self._container(request.container_id)
        actor = self._require_actor(record)
        await actor.call(c.Stop(float(max(request.timeout, 0))))
        return pb.StopContainerResponse()

    async def remove_container(self, request: pb.RemoveContainerRequest) -> pb.RemoveContainerResponse:
        try:
            record = self._container(request.container_id)
        except NotFound:
            return pb.RemoveContainerResponse()  # idempotent
        await self._remove_container(record)
        return pb.RemoveContainerResponse()

    async def _remove_container(self, record: ContainerRecord) -> None:
        actor = self._actor(record.id)
        if actor is not None:
            try:
                await actor.call(c.Remove(force=True))
            except NotFound:
                pass
        await trio.to_thread.run_sync(self.containers.delete, record.id)

    def _container_state(self, record: ContainerRecord) -> Any:
        actor = self._actor(record.id)
        if actor is None:
            return pb.CONTAINER_UNKNOWN
        return _STATE_OF.get(actor.status.state, pb.CONTAINER_UNKNOWN)

    def _container_fields(self, record: ContainerRecord, state: Any) -> dict[str, Any]:
        """What a Container (ListContainers) and a ContainerStatus both say."""
        return {"id": record.id, "metadata": self._container_meta(record), "state": state,
                "created_at": record.created_at, "image": pb.ImageSpec(image=record.image),
                "image_ref": record.image_ref, "labels": record.labels, "annotations": record.annotations}

    def _container_meta(self, record: ContainerRecord) -> pb.ContainerMetadata:
        return pb.ContainerMetadata(name=record.name, attempt=record.attempt)

    async def list_containers(self, request: pb.ListContainersRequest) -> pb.ListContainersResponse:
        f = request.filter if request.HasField("filter") else None
        out = []
        for record in list(self.containers.items.values()):
            state = self._container_state(record)
            if _selected(f, record.id, record.labels, sandbox_id=record.sandbox_id, state=state):
                out.append(pb.Container(**self._container_fields(record, state),
                                        pod_sandbox_id=record.sandbox_id))
        return pb.ListContainersResponse(containers=out)

    async def container_status(self, request: pb.ContainerStatusRequest) -> pb.ContainerStatusResponse:
        record = self._container(request.container_id)
        actor = self._actor(record.id)
        state = self._container_state(record)
        status = pb.ContainerStatus(
            **self._container_fields(record, state), log_path=record.log_path,
            mounts=[pb.Mount(container_path=m["container_path"], host_path=m["host_path"],
                             readonly=m["readonly"], propagation=m.get("propagation", 0))
                    for m in record.mounts],
        )
        if actor is not None:
            status.resources.linux.CopyFrom(linux_resources(actor.config))
            s = actor.status
            status.started_at = _ns(s.started_at)
            if state == pb.CONTAINER_EXITED:
                status.finished_at = _ns(s.finished_at)
                status.exit_code = s.exit_code
                status.reason = "OOMKilled" if s.oom_killed else ("Completed" if s.exit_code == 0 else "Error")
                status.message = s.error
        response = pb.ContainerStatusResponse(status=status)
        if request.verbose and actor is not None:
            response.info["info"] = f'{{"pid": {actor.status.pid}, "sandboxID": "{record.sandbox_id}"}}'
        return response

    async def exec_sync(self, request: pb.ExecSyncRequest) -> pb.ExecSyncResponse:
        from engine.supervisor.container_service import pump_exec

        record = self._container(request.container_id)
        actor = self._require_actor(record)
        if not request.cmd:
            raise InvalidArgument("ExecSync: a command is required")
        session: c.ExecSession = await actor.call(c.ExecStart(list(request.cmd)))
        output = {"stdout": bytearray(), "stderr": bytearray()}

        async def collect(item: dict[str, Any]) -> None:
            buf = output[item["stream"]]
            if len(buf) < EXEC_OUTPUT_MAX:
                buf += item["data"][: EXEC_OUTPUT_MAX - len(buf)]

        code = 255
        timed_out = False
        try:
            if request.timeout > 0:
                with trio.move_on_after(request.timeout) as scope:
                    code = await pump_exec(session.handle, collect)
                timed_out = scope.cancelled_caught
            else:
                code = await pump_exec(session.handle, collect)
        finally:
            actor.notify(c.ExecEnded(session.session, code))
        if timed_out:
            from engine.errors import Timeout

            raise Timeout(f"command {list(request.cmd)} timed out after {request.timeout}s")
        return pb.ExecSyncResponse(stdout=bytes(output["stdout"]), stderr=bytes(output["stderr"]),
                                   exit_code=code)

    # --- stats ------------------------------------------------------------------------------

    async def container_stats(self, request: pb.ContainerStatsRequest) -> pb.ContainerStatsResponse:
        record = self._container(request.container_id)
        return pb.ContainerStatsResponse(stats=await self._stats(record))

    async def list_container_stats(self, request: pb.ListContainerStatsRequest,
                                   ) -> pb.ListContainerStatsResponse:
        f = request.filter if request.HasField("filter") else None
        out = [await self._stats(record) for record in list(self.containers.items.values())
               if _selected(f, record.id, record.labels, sandbox_id=record.sandbox_id)]
        return pb.ListContainerStatsResponse(stats=out)

    async def _stats(self, record: ContainerRecord) -> pb.ContainerStats:
        actor = self._actor(record.id)
        cgroup = ""
        if actor is not None:
            cgroup = actor.config.cgroups_path or f"/engine/{record.id}"
        usage = await trio.to_thread.run_sync(read_cgroup_usage, cgroup)
        now = time.time_ns()
        stats = pb.ContainerStats(attributes=pb.ContainerAttributes(
            id=record.id, metadata=self._container_meta(record), labels=record.labels,
            annotations=record.annotations))
        stats.cpu.timestamp = now
        stats.cpu.usage_core_nano_seconds.value = usage["cpu"]
        stats.memory.timestamp = now
        stats.memory.working_set_bytes.value = usage["working_set"]
        stats.writable_layer.timestamp = now
        stats.writable_layer.fs_id.mountpoint = str(self.app.layout.root)
        stats.writable_layer.used_bytes.value = 0  # not measured yet
        return stats

    async def pod_sandbox_stats(self, request: pb.PodSandboxStatsRequest) -> pb.PodSandboxStatsResponse:
        record = self._sandbox(request.pod_sandbox_id)
        return pb.PodSandboxStatsResponse(stats=await self._sandbox_stats(record))

    async def list_pod_sandbox_stats(self, request: pb.ListPodSandboxStatsRequest,
                                     ) -> pb.ListPodSandboxStatsResponse:
        f = request.filter if request.HasField("filter") else None
        out = [await self._sandbox_stats(record) for record in list(self.sandboxes.items.values())
               if _selected(f, record.id, record.labels)]
        return pb.ListPodSandboxStatsResponse(stats=out)

    async def _sandbox_stats(self, record: SandboxRecord) -> pb.PodSandboxStats:
        """The pod's usage: its containers' and its infra process's cgroups added up (the
        pod has no cgroup of its own unless kubelet gives a cgroup parent), and the traffic
        of the pod's network namespace, read through the infra process."""
        containers = [await self._stats(r) for r in list(self.containers.items.values())
                      if r.sandbox_id == record.id]
        infra = self._actor(record.id)
        infra_usage = {"cpu": 0, "working_set": 0}
        interfaces: list[dict[str, Any]] = []
        if infra is not None:
            infra_usage = await trio.to_thread.run_sync(
                read_cgroup_usage, infra.config.cgroups_path or f"/engine/{record.id}")
            if infra.status.pid and record.netns:
                interfaces = await trio.to_thread.run_sync(read_net_dev, infra.status.pid)
        now = time.time_ns()
        stats = pb.PodSandboxStats(attributes=pb.PodSandboxAttributes(
            id=record.id, metadata=self._sandbox_meta(record), labels=record.labels,
            annotations=record.annotations))
        linux = stats.linux
        linux.cpu.timestamp = now
        linux.cpu.usage_core_nano_seconds.value = infra_usage["cpu"] + sum(
            c.cpu.usage_core_nano_seconds.value for c in containers)
        linux.memory.timestamp = now
        linux.memory.working_set_bytes.value = infra_usage["working_set"] + sum(
            c.memory.working_set_bytes.value for c in containers)
        linux.containers.extend(containers)
        if interfaces:
            linux.network.timestamp = now
            usages = [pb.NetworkInterfaceUsage(name=i["name"], rx_bytes=pb.UInt64Value(value=i["rx_bytes"]),
                                               rx_errors=pb.UInt64Value(value=i["rx_errors"]),
                                               tx_bytes=pb.UInt64Value(value=i["tx_bytes"]),
                                               tx_errors=pb.UInt64Value(value=i["tx_errors"]))
                      for i in interfaces]
            default = next((u for u in usages if u.name == "eth0"), usages[0])
            linux.network.default_interface.CopyFrom(default)
            linux.network.interfaces.extend(usages)
        return stats

    async def update_container_resources(self, request: pb.UpdateContainerResourcesRequest,
                                         ) -> pb.UpdateContainerResourcesResponse:
        """Memory, CPU quota, CPU shares and cpusets, through the actor (the engine's update:
        the running cgroup first, then the config for the next start). What engine cannot
        apply yet is refused by name rather than silently dropped."""
        record = self._container(request.container_id)
        actor = self._require_actor(record)
        r = request.linux
        unsupported = [name for name, value in (
            ("hugepage_limits", len(r.hugepage_limits)), ("unified", len(r.unified)),
            ("memory_swap_limit_in_bytes", r.memory_swap_limit_in_bytes)) if value]
        if unsupported:
            raise InvalidArgument(f"UpdateContainerResources: engine cannot change {', '.join(unsupported)} "
                                  "of a container yet (memory_limit_in_bytes, cpu_quota, cpu_period, "
                                  "cpu_shares, cpuset_cpus and cpuset_mems it can)")
        if r.cpu_quota < 0 and r.cpu_quota != -1:
            raise InvalidArgument(f"UpdateContainerResources: invalid cpu_quota {r.cpu_quota}")
        update = c.Update(
            memory=r.memory_limit_in_bytes or None,
            cpus=r.cpu_quota / (r.cpu_period or 100_000) if r.cpu_quota > 0 else None,
            cpu_shares=r.cpu_shares or None, cpuset_cpus=r.cpuset_cpus or None,
            cpuset_mems=r.cpuset_mems or None)
        if update == c.Update():
            return pb.UpdateContainerResourcesResponse()  # nothing asked: nothing to do
        await actor.call(update)
        return pb.UpdateContainerResourcesResponse()

    async def reopen_container_log(self, request: pb.ReopenContainerLogRequest,
                                   ) -> pb.ReopenContainerLogResponse:
        record = self._container(request.container_id)
        actor = self._require_actor(record)
        if actor.status.state != ContainerState.RUNNING:
            raise InvalidArgument(f"container {record.id[:12]} is not running")
        await _conmon_reopen_log(actor.bundle_dir)
        # conmon reopens asynchronously; kubelet expects the new file once we answer
        log_path = actor.files.log_path
        with trio.move_on_after(REOPEN_WAIT):
            for _ in range(int(REOPEN_WAIT / 0.01)):  # conmon gives no signal: poll the file
                if await trio.to_thread.run_sync(log_path.exists):
                    return pb.ReopenContainerLogResponse()
                await trio.sleep(0.01)
        raise Unavailable(f"the monitor of container {record.id[:12]} did not reopen {log_path} "
                          f"within {REOPEN_WAIT:g}s")

    # --- streaming: Exec, Attach, PortForward (engine.cri.streaming) -------------------------

    # the streaming server handing out the URLs; set by engine.cri.server.serve_cri
    streaming: Any = None

    def _streaming_url(self, target: Any) -> str:
        if self.streaming is None:
            raise Unavailable("the CRI streaming server is not running")
        return str(self.streaming.url_for(target))

    def _running_actor(self, rpc: str, container_id: str) -> ContainerActor:
        actor = self._require_actor(self._container(container_id))
        if actor.status.state != ContainerState.RUNNING:
            raise Conflict(f"{rpc}: container {actor.config.id[:12]} is not running "
                           f"({actor.status.state.value})")
        return actor

    @staticmethod
    def _check_stdio(rpc: str, tty: bool, stdin: bool, stdout: bool, stderr: bool) -> None:
        if tty and stderr:
            raise InvalidArgument(f"{rpc}: tty and stderr cannot both be true (a terminal has "
                                  "one output)")
        if not (stdin or stdout or stderr):
            raise InvalidArgument(f"{rpc}: one of stdin, stdout or stderr must be set")

    async def exec(self, request: pb.ExecRequest) -> pb.ExecResponse:
        from engine.cri.streaming.targets import ExecTarget

        if not request.container_id:
            raise InvalidArgument("Exec: missing required container_id")
        if not request.cmd:
            raise InvalidArgument("Exec: a command is required")
        self._check_stdio("Exec", request.tty, request.stdin, request.stdout, request.stderr)
        actor = self._running_actor("Exec", request.container_id)
        target = ExecTarget(actor.config.id, list(request.cmd), tty=request.tty, stdin=request.stdin,
                            stdout=request.stdout, stderr=request.stderr)
        return pb.ExecResponse(url=self._streaming_url(target))

    async def attach(self, request: pb.AttachRequest) -> pb.AttachResponse:
        from engine.cri.streaming.targets import AttachTarget

        if not request.container_id:
            raise InvalidArgument("Attach: missing required container_id")
        self._check_stdio("Attach", request.tty, request.stdin, request.stdout, request.stderr)
        actor = self._running_actor("Attach", request.container_id)
        if request.tty and not actor.config.tty:
            raise InvalidArgument(f"Attach: container {actor.config.id[:12]} has no terminal (tty "
                                  "was not set when it was created)")
        target = AttachTarget(actor.config.id, tty=request.tty, stdin=request.stdin and actor.config.open_stdin,
                              stdout=request.stdout, stderr=request.stderr,
                              stdin_once=actor.config.stdin_once)
        return pb.AttachResponse(url=self._streaming_url(target))

    async def port_forward(self, request: pb.PortForwardRequest) -> pb.PortForwardResponse:
        from engine.cri.streaming.targets import PortForwardTarget

        if not request.pod_sandbox_id:
            raise InvalidArgument("PortForward: missing required pod_sandbox_id")
        record = self._sandbox(request.pod_sandbox_id)
        if self._sandbox_state(record) != pb.SANDBOX_READY:
            raise Conflict(f"PortForward: pod sandbox {record.id[:12]} is not ready")
        for port in request.port:
            if not 0 < port < 65536:
                raise InvalidArgument(f"PortForward: invalid port {port}: use 1 to 65535")
        target = PortForwardTarget(record.id, record.netns, list(request.port))
        return pb.PortForwardResponse(url=self._streaming_url(target))


async def _conmon_reopen_log(bundle_dir: Path) -> None:
    """conmon's control FIFO: message type 2 reopens the log file (kubelet rotated it)."""
    ctl = bundle_dir / "ctl"

    def write() -> None:
        fd = os.open(ctl, os.O_WRONLY | os.O_NONBLOCK)
        try:
            os.write(fd, b"2 0 0\n")
        finally:
            os.close(fd)

    try:
        await trio.to_thread.run_sync(write)
    except OSError as e:
        raise Unavailable(f"cannot ask the container's monitor to reopen its log: {e}") from None


CGROUP_ROOT = Path("/sys/fs/cgroup")


def read_cgroup_usage(cgroup: str) -> dict[str, int]:
    """CPU time (ns) and memory working set (bytes) of a cgroup v1 path; 0 for what cannot
    be read (a container that is not running has no cgroup). Blocking."""

    def read(controller: str, name: str) -> str:
        try:
            return (CGROUP_ROOT / controller / cgroup.lstrip("/") / name).read_text()
        except OSError:
            return ""

    if not cgroup:
        return {"cpu": 0, "working_set": 0}
    cpu = int(read("cpuacct", "cpuacct.usage").strip() or 0)
    used = int(read("memory", "memory.usage_in_bytes").strip() or 0)
    inactive = 0
    for line in read("memory", "memory.stat").splitlines():
        key, _, value = line.partition(" ")
        if key == "total_inactive_file":
            inactive = int(value or 0)
    return {"cpu": cpu, "working_set": max(used - inactive, 0)}


def read_net_dev(pid: int) -> list[dict[str, Any]]:
    """The interfaces of ``pid``'s network namespace but loopback, with their byte and error
    counters (``/proc/<pid>/net/dev``); [] when the process is gone. Blocking."""
    try:
        lines = Path(f"/proc/{pid}/net/dev").read_text().splitlines()[2:]
    except OSError:
        return []
    found = []
    for line in lines:
        name, _, counters = line.partition(":")
        fields = counters.split()
        if name.strip() == "lo" or len(fields) < 16:
            continue
        found.append({"name": name.strip(), "rx_bytes": int(fields[0]), "rx_errors": int(fields[2]),
                      "tx_bytes": int(fields[8]), "tx_errors": int(fields[10])})
    return found


def _remove_tree_quiet(path: Path) -> None:
    from engine.store.rmtree import remove_tree

    try:
        remove_tree(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        log.warning("cannot remove %s: %s", path, e)
