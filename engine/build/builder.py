"""The classic builder: each step runs on the previous step's image.

A RUN runs in a real container of the engine (ContainerService: the configured runtime,
an overlay root) and its changes are committed as a layer; COPY, ADD and WORKDIR write
into a container that never runs, then commit it the same way; the other instructions
change only the config (each makes an image with the parent's layers). Steps print
dockerd's lines (``Step 2/5 : …``, `` ---> Running in …``, `` ---> 1a2b3c4d5e6f``) through
``emit``. Every container a step makes is removed when the step ends, even when it fails
or the client goes away. Each step's image stays as the build cache (``engine.build.cache``):
a step whose parent and key match an earlier step's image takes that image (`` ---> Using
cache``) and makes no container.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio

from engine.actors import commands as c
from engine.actors.container import ContainerActor
from engine.build import copying
from engine.build.cache import SCRATCH, BuildCache, step_key
from engine.build.dockerfile import Dockerfile, Instruction, Lexer, parse
from engine.build.images import layer_scratch, new_image, remove_scratch, scratch_config
from engine.errors import EngineError, InvalidArgument, NotFound, RuntimeFailure
from engine.images.records import Image
from engine.images.store import ImageStore
from engine.reference import parse_reference
from engine.supervisor.app import App
from engine.supervisor.commit import RUNTIME_MOUNT_TARGETS, drop_mount_targets

log = logging.getLogger("engine.build")

Emit = Callable[[dict[str, Any]], Awaitable[None]]
DEFAULT_SHELL = ["/bin/sh", "-c"]
REMOVE_WAIT = 30.0  # seconds a step's container removal may take
NOP = "/bin/sh -c #(nop) "
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_DURATION_NS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 1_000_000_000,
                "m": 60_000_000_000, "h": 3_600_000_000_000}


class StepFailed(RuntimeFailure):
    """A RUN's command ended with a non-zero code (``details['code']``)."""

    code = "build_step_failed"


@attrs.frozen
class BuildOptions:
    tags: list[str] = attrs.field(factory=list)
    dockerfile: str = "Dockerfile"
    build_args: dict[str, str | None] = attrs.field(factory=dict)
    labels: dict[str, str] = attrs.field(factory=dict)
    no_cache: bool = False
    pull: bool = False
    quiet: bool = False
    target: str = ""
    network_mode: str = ""
    platform: str = ""


@attrs.define
class Stage:
    """One stage's state as its steps go: the image so far (None: scratch, nothing yet),
    its raw config (what the next image's config is built from) and the declared ARGs."""

    index: int
    name: str
    image: Image | None = None
    raw: dict[str, Any] = attrs.field(factory=dict)
    config: dict[str, Any] = attrs.field(factory=dict)
    args: dict[str, str] = attrs.field(factory=dict)
    cmd_set: bool = False

    @property
    def env(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for item in self.config.get("Env") or []:
            key, _, value = item.partition("=")
            out[key] = value
        return out


def parse_duration(text: str, flag: str) -> int:
    """Go's time.ParseDuration for HEALTHCHECK's flags, in nanoseconds."""
    pos, total = 0, 0.0
    if text == "0":
        return 0
    for match in _DURATION.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_NS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise InvalidArgument(f"invalid --{flag} {text!r}: expected a duration such as 30s or 1m30s")
    return int(total)


def go_quote_list(items: list[str]) -> str:
    """Go's ``%q`` of a []string: ``["a" "b"]`` (what dockerd's history lines show)."""
    return "[" + " ".join(json.dumps(i) for i in items) + "]"


class Builder:
    def __init__(self, app: App, context: Path, options: BuildOptions, emit: Emit) -> None:
        self.app = app
        self.context = context
        self.options = options
        self._emit = emit
        self.store: ImageStore = app.services.require_images()
        self.cache = BuildCache.of(self.store)
        self.held: list[str] = []  # images this build stands on: builder prune leaves them
        self.used_args: set[str] = set()
        self.lexer = Lexer()

    # --- output ------------------------------------------------------------------------------

    async def say(self, text: str) -> None:
        if not self.options.quiet:
            await self._emit({"stream": text})

    # --- the whole build ----------------------------------------------------------------------

    def read_dockerfile(self) -> Dockerfile:
        from engine.build.context import read_context_file

        name = self.options.dockerfile or "Dockerfile"
        try:
            text = read_context_file(self.context, name)
        except NotFound:
            if name == "Dockerfile":
                try:
                    text = read_context_file(self.context, "dockerfile")
                except NotFound:
                    raise NotFound("Cannot locate specified Dockerfile: Dockerfile") from None
            else:
                raise NotFound(f"Cannot locate specified Dockerfile: {name}") from None
        return parse(text.decode(errors="replace"))

    def plan(self, dockerfile: Dockerfile) -> tuple[list[Instruction], list[list[Instruction]]]:
        """The meta ARGs and the stages to run (up to ``target``), with the build's own
        labels as a last LABEL step, as dockerd adds them."""
        for instr in dockerfile.meta_args():
            if instr.cmd != "arg":
                raise InvalidArgument("no build stage in current context")
        stages = dockerfile.stages()
        if not stages:
            raise InvalidArgument("no build stage in current context")
        if self.options.target:
            names = [s[0].args[1] if len(s[0].args) > 1 else "" for s in stages]
            target = self.options.target.lower()
            if target not in names:
                raise InvalidArgument(f"failed to reach build target {self.options.target} in Dockerfile")
            stages = stages[:names.index(target) + 1]
        if self.options.labels:
            words = [f"{k}={json.dumps(v) if not v or any(ch.isspace() for ch in v) else v}"
                     for k, v in sorted(self.options.labels.items())]
            text = "LABEL " + " ".join(words)
            stages[-1] = [*stages[-1], Instruction(cmd="label", original=text, line=0, rest=" ".join(words),
                                                   args=words)]
        return dockerfile.meta_args(), stages

    async def build(self) -> Image:
        """Run every step; returns the final image, tagged. Raises the step's error."""
        for tag in self.options.tags:
            parse_reference(tag)  # a bad name fails before any step runs
        dockerfile = await trio.to_thread.run_sync(self.read_dockerfile)
        self.lexer = Lexer(dockerfile.escape)
        meta, stages = self.plan(dockerfile)
        total = len(meta) + sum(len(s) for s in stages)
        step = 0
        meta_args: dict[str, str] = {}
        done: list[Stage] = []
        try:
            for instr in meta:
                step += 1
                await self.say(f"Step {step}/{total} : {instr.original}\n")
                for name, value in self._arg_values(instr, meta_args):
                    meta_args[name] = value
            for index, instructions in enumerate(stages):
                stage = Stage(index=index, name=instructions[0].args[1] if len(instructions[0].args) > 1 else "")
                for instr in instructions:
                    step += 1
                    await self.say(f"Step {step}/{total} : {instr.original}\n")
                    await self.dispatch(stage, instr, meta_args, done)
                done.append(stage)
            final = done[-1]
            if final.image is None:
                raise InvalidArgument("the build made no image (FROM scratch with nothing added)")
            await self._warn_unused_args(meta_args)
            image = final.image
            if self.options.quiet:
                await self._emit({"stream": image.id + "\n"})
            else:
                await self._emit({"aux": {"ID": image.id}})
                await self.say(f"Successfully built {image.short_id}\n")
            await self.cache.mark_result(image.id)
            for tag in self.options.tags:
                ref = parse_reference(tag)
                image = await self.store.tag(image.id, str(ref))
                self.app.events.emit("image", "tag", image.id, name=str(ref))
                await self.say(f"Successfully tagged {ref.familiar()}\n")
            return image
        finally:
            self.cache.release(self.held)

    async def _warn_unused_args(self, meta_args: dict[str, str]) -> None:
        unused = sorted(set(self.options.build_args) - self.used_args - set(meta_args))
        if unused:
            await self.say(f"[Warning] One or more build-args [{' '.join(unused)}] were not consumed\n")

    async def _record(self, stage: Stage, created_by: str, layer: Path | None = None, *,
                      step: tuple[str, str]) -> None:
        """The step's image, recorded in the cache under ``step`` (parent, key)."""
        image = await new_image(self.store, stage.image, stage.raw, stage.config, created_by, layer)
        self._use(stage, image)
        await self.cache.record(step[0], step[1], image.id)

    def _use(self, stage: Stage, image: Image) -> None:
        self.cache.hold(image.id)
        self.held.append(image.id)
        stage.image = image
        stage.raw = json.loads(image.config.raw)
        stage.raw.pop("config", None)

    # --- the cache ---------------------------------------------------------------------------------

    @staticmethod
    def _parent(stage: Stage) -> str:
        return stage.image.id if stage.image is not None else SCRATCH

    def _key(self, stage: Stage, created_by: str, **extra: Any) -> str:
        """What decides the step's image besides its parent: the history line, the config
        after the step (env, labels, workdir, user...), the author, and ``extra``."""
        config = {k: v for k, v in stage.config.items() if v is not None}
        return step_key({"created_by": created_by, "config": config, "author": stage.raw.get("author", ""),
                         **extra})

    async def _hit(self, stage: Stage, step: tuple[str, str]) -> bool:
        """Take the cached image of ``step`` if there is one (not with ``nocache``); says
        dockerd's two lines."""
        if self.options.no_cache:
            return False
        image = self.cache.lookup(*step)
        if image is None:
            return False
        self._use(stage, image)
        await self.say(" ---> Using cache\n")
        await self._step_done(stage)
        return True

    async def _step_done(self, stage: Stage) -> None:
        assert stage.image is not None
        await self.say(f" ---> {stage.image.short_id}\n")

    # --- variables ------------------------------------------------------------------------------

    def _arg_values(self, instr: Instruction, visible: dict[str, str]) -> list[tuple[str, str]]:
        """``ARG a=1 b``: each name with its value (a --build-arg wins over the default;
        without either, an ARG re-declared in a stage takes the meta ARG's value)."""
        out = []
        for word in instr.args:
            name, eq, default = word.partition("=")
            if not name:
                raise InvalidArgument(f"dockerfile parse error line {instr.line}: ARG names can not be blank")
            if name in self.options.build_args and self.options.build_args[name] is not None:
                value = self.options.build_args[name] or ""
                self.used_args.add(name)
            elif eq:
                value = self.lexer.word(default, visible)
            elif name in visible:
                value = visible[name]
            else:
                continue
            out.append((name, value))
        return out

    def _expand_env(self, stage: Stage) -> dict[str, str]:
        return {**stage.args, **stage.env}

    def _word(self, stage: Stage, text: str) -> str:
        return self.lexer.word(text, self._expand_env(stage))

    # --- instructions ---------------------------------------------------------------------------

    async def dispatch(self, stage: Stage, instr: Instruction, meta_args: dict[str, str],
                       done: list[Stage]) -> None:
        handler = getattr(self, f"_do_{instr.cmd}")
        try:
            await handler(stage, instr, meta_args, done)
        except StepFailed:
            raise
        except EngineError as e:
            if instr.line and f"line {instr.line}" not in e.message and instr.cmd not in ("run", "copy", "add", "from"):
                e.message = f"{e.message} (Dockerfile line {instr.line}: {instr.original})"
                e.args = (e.message,)
            raise

    async def _do_from(self, stage: Stage, instr: Instruction, meta_args: dict[str, str],
                       done: list[Stage]) -> None:
        name = self.lexer.word(instr.args[0], meta_args)
        if not name:
            raise InvalidArgument(f"base name ({instr.args[0]}) should not be blank")
        previous = {s.name: s for s in done if s.name}
        if name.lower() in previous:
            source = previous[name.lower()]
            stage.image, stage.raw = source.image, dict(source.raw)
            stage.config = dict(source.config)
        elif name.lower() == "scratch":
            raw = scratch_config()
            stage.config = raw.pop("config")
            stage.raw = raw
            stage.image = None
            return
        else:
            image = await self.base_image(name)
            stage.image = image
            raw = json.loads(image.config.raw)
            stage.config = dict(raw.pop("config", None) or {})
            stage.raw = raw
        # ONBUILD triggers are not run by this builder (see docs): say so rather than skip them
        if stage.config.get("OnBuild"):
            raise InvalidArgument(f"image {name} has ONBUILD triggers, which engine's builder does not run yet")
        await self._step_done(stage)

    async def base_image(self, name: str) -> Image:
        """FROM's image: from the store, pulled when missing (or always with ``pull``)."""
        ref = parse_reference(name)
        if not self.options.pull:
            try:
                return self.store.get(name)
            except NotFound:
                pass
        from engine.images.pull import pull

        await self._emit({"status": f"Pulling from {ref.path}", "id": ref.tag or ref.digest or "latest"})
        client = self.app.plugins.register.registry_client_for(ref.domain)
        image = await pull(client, self.store, ref,
                           platform=self.options.platform or None)
        self.app.events.emit("image", "pull", image.id, name=str(ref))
        digest = image.index_digest or image.manifest_digest
        await self._emit({"status": f"Digest: {digest}"})
        await self._emit({"status": f"Status: Downloaded newer image for {ref.familiar()}"})
        return image

    def _require_image(self, stage: Stage) -> None:
        if not stage.raw and stage.image is None:
            raise InvalidArgument("Please provide a source image with `from` prior to commit")

    async def _metadata(self, stage: Stage, text: str) -> None:
        """A step that changes only the config: dockerd makes (and removes) a container
        that never runs and commits it; so does engine, for the same lines and events."""
        created_by = NOP + " " + text
        step = (self._parent(stage), self._key(stage, created_by))
        if await self._hit(stage, step):
            return
        if stage.image is None:
            await self._record(stage, created_by, step=step)
            await self._step_done(stage)
            return
        async with self.container(stage, announce=True):
            await self._record(stage, created_by, step=step)
        await self._step_done(stage)

    async def _do_arg(self, stage: Stage, instr: Instruction, meta_args: dict[str, str],
                      done: list[Stage]) -> None:
        visible = {**meta_args, **self._expand_env(stage)}
        words = []  # dockerd's history line: the Dockerfile's defaults, not --build-arg's values
        for word in instr.args:
            name, eq, default = word.partition("=")
            words.append(f"{name}={self.lexer.word(default, visible)}" if eq else name)
        for name, value in self._arg_values(instr, visible):
            stage.args[name] = value
        for word in instr.args:  # declared without a value: known (consumed), empty
            name = word.partition("=")[0]
            if name in self.options.build_args:
                self.used_args.add(name)
        await self._metadata(stage, "ARG " + " ".join(words))

    async def _do_env(self, stage: Stage, instr: Instruction, meta_args: dict[str, str],
                      done: list[Stage]) -> None:
        env = [e for e in stage.config.get("Env") or []]
        words = []
        for word in instr.args:
            key, _, value = word.partition("=")
            key = self._word(stage, key)
            value = self._word(stage, value)
            env = [e for e in env if e.partition("=")[0] != key] + [f"{key}={value}"]
            stage.config["Env"] = env
            words.append(f"{key}={value}")
        await self._metadata(stage, "ENV " + " ".join(words))

    async def _do_label(self, stage: Stage, instr: Instruction, meta_args: dict[str, str],
                        done: list[Stage]) -> None:
        labels = dict(stage.config.get("Labels") or {})
        words = []
        for word in instr.args:
            key, _, value = word.partition("=")
            key, value = self._word(stage, key), self._word(stage, value)
            labels[key] = value
            words.append(f"{key}={value}")
        stage.config["Labels"] = labels
        await self._metadata(stage, "LABEL " + " ".join(words))

    async def _do_maintainer(self, stage: Stage, instr: Instruction, meta_args: dict[str, str],
                             done: list[Stage]) -> None:
        stage.raw["author"] = instr.args[0]
        await self._metadata(stage, "MAINTAINER " + instr.args[0])

    async def _do_user(self, stage: Stage, instr: Instruction, meta_args: dict[str, str],
                       done: list[Stage]) -> None:
        stage.config["User"] = self._word(stage, instr.args[0])
        await self._metadata(stage, "USER " + stage.config["User"])

    async def _do_stopsignal(self, stage: Stage, instr: Instruction, meta_args: dict[str, str],
                             done: list[Stage]) -> None:
        from engine.actors.container import parse_signal

        signal = self._word(stage, instr.args[0])
        parse_signal(signal)
        stage.config["StopSignal"] = signal
        await self._metadata(stage, "STOPSIGNAL " + signal)

    async def _do_expose(self, stage: Stage, instr: Instruction, meta_args: dict[str, str],
                         done: list[Stage]) -> None:
        from engine.network.ports import parse_expose

        ports = dict(stage.config.get("ExposedPorts") or {})
        words = []
        for word in instr.args:
            value = self._word(stage, word)
            words.append(value)
            ports.update({key: {} for key in parse_expose(value)})
        stage.config["ExposedPorts"] = ports
        await self._metadata(stage, "EXPOSE " + " ".join(words))

    async def _do_volume(self, stage: Stage, instr: Instruction, meta_args: dict[str, str],
                         done: list[Stage]) -> None:
        volumes = dict(stage.config.get("Volumes") or {})
        words = [self._word(stage, w) for w in instr.args]
        for word in words:
            if not word.strip():
                raise InvalidArgument("VOLUME specified can not be an empty string")
            volumes[word] = {}
        stage.config["Volumes"] = volumes
        await self._metadata(stage, "VOLUME " + go_quote_list(words))

    def _shell_form(self, stage: Stage, text: str) -> list[str]:
        return [*(stage.config.get("Shell") or DEFAULT_SHELL), text]

    async def _do_cmd(self, stage: Stage, instr: Instruction, meta_args: dict[str, str],
                      done: list[Stage]) -> None:
        cmd = list(instr.args) if instr.json else self._shell_form(stage, instr.rest)
        stage.config["Cmd"] = cmd
        stage.cmd_set = True
        await self._metadata(stage, "CMD " + go_quote_list(cmd))

    async def _do_entrypoint(self, stage: Stage, instr: Instruction, meta_args: dict[str, str],
                             done: list[Stage]) -> None:
        entrypoint = list(instr.args) if instr.json else (self._shell_form(stage, instr.rest) if instr.rest else [])
        stage.config["Entrypoint"] = entrypoint or None
        if not stage.cmd_set:  # dockerd: a new entrypoint drops the base image's cmd
            stage.config["Cmd"] = None
        await self._metadata(stage, "ENTRYPOINT " + go_quote_list(entrypoint))

    async def _do_shell(self, stage: Stage, instr: Instruction, meta_args: dict[str, str],
                        done: list[Stage]) -> None:
        if not instr.args:
            raise InvalidArgument(f"dockerfile parse error line {instr.line}: SHELL requires at least one argument")
        stage.config["Shell"] = list(instr.args)
        await self._metadata(stage, "SHELL " + go_quote_list(list(instr.args)))

    async def _do_onbuild(self, stage: Stage, instr: Instruction, meta_args: dict[str, str],
                          done: list[Stage]) -> None:
        trigger = instr.args[0]
        word = trigger.split(None, 1)[0].upper() if trigger.strip() else ""
        if word in ("ONBUILD", "FROM", "MAINTAINER"):
            raise InvalidArgument(f"{word} isn't allowed as an ONBUILD trigger")
        stage.config["OnBuild"] = [*(stage.config.get("OnBuild") or []), trigger]
        await self._metadata(stage, "ONBUILD " + trigger)

    async def _do_healthcheck(self, stage: Stage, instr: Instruction, meta_args: dict[str, str],
                              done: list[Stage]) -> None:
        if instr.args == ["NONE"]:
            health: dict[str, Any] = {"Test": ["NONE"]}
        else:
            health = {"Test": list(instr.args)}
            for flag, key in (("interval", "Interval"), ("timeout", "Timeout"),
                              ("start-period", "StartPeriod"), ("start-interval", "StartInterval")):
                if flag in instr.flags:
                    value = parse_duration(instr.flags[flag], flag)
                    if value and value < 1_000_000:
                        raise InvalidArgument(f"--{flag} cannot be less than 1ms")
                    health[key] = value
            if "retries" in instr.flags:
                try:
                    retries = int(instr.flags["retries"])
                except ValueError:
                    raise InvalidArgument(f"invalid --retries {instr.flags['retries']!r}: expected a number") from None
                if retries < 0:
                    raise InvalidArgument("--retries cannot be negative")
                health["Retries"] = retries
        stage.config["Healthcheck"] = health
        await self._metadata(stage, "HEALTHCHECK " + json.dumps(health, separators=(",", ":")))

    async def _do_workdir(self, stage: Stage, instr: Instruction, meta_args: dict[str, str],
                          done: list[Stage]) -> None:
        path = self._word(stage, instr.args[0])
        workdir = posixpath.normpath(posixpath.join(stage.config.get("WorkingDir") or "/", path))
        stage.config["WorkingDir"] = workdir
        created_by = NOP + "WORKDIR " + workdir
        step = (self._parent(stage), self._key(stage, created_by))
        if await self._hit(stage, step):
            return
        async with self.container(stage, announce=True) as actor:
            from engine.supervisor.container_verbs import open_root

            async with open_root(actor, with_mounts=False) as root_fd:
                await trio.to_thread.run_sync(_make_dirs, root_fd, workdir)
            await self._commit(stage, actor, created_by, empty_ok=True, step=step)
        await self._step_done(stage)

    async def _do_run(self, stage: Stage, instr: Instruction, meta_args: dict[str, str],
                      done: list[Stage]) -> None:
        args = list(instr.args) if instr.json else self._shell_form(stage, instr.rest)
        env = stage.env
        build_env = {k: v for k, v in sorted(stage.args.items()) if k not in env}
        for name in build_env:
            self.used_args.add(name)
        created_by = " ".join(args) if not instr.json else NOP + " RUN " + go_quote_list(args)
        if not instr.json:
            created_by = " ".join([*(stage.config.get("Shell") or DEFAULT_SHELL), instr.rest])
        if build_env:
            created_by = f"|{len(build_env)} " + " ".join(f"{k}={v}" for k, v in build_env.items()) + " " + created_by
        extra_env = [f"{k}={v}" for k, v in build_env.items()]
        step = (self._parent(stage), self._key(stage, created_by, run=args, env=extra_env))
        if await self._hit(stage, step):
            return
        async with self.container(stage, announce=True, cmd=args, env=extra_env) as actor:
            from engine.supervisor.container_service import ContainerService

            async def output(item: dict[str, Any]) -> None:
                data = item.get("data")
                if isinstance(data, bytes | bytearray) and data:
                    await self.say(bytes(data).decode(errors="replace"))

            result = await ContainerService(self.app).start(actor.id, send=output)
            code = int(result.get("ExitCode") or 0)
            if code != 0:
                command = " ".join(args) if not instr.json else go_quote_list(args)
                raise StepFailed(f"The command '{command}' returned a non-zero code: {code}", code=code)
            await self._commit(stage, actor, created_by, empty_ok=True, drop_targets=True, step=step)
        await self._step_done(stage)

    async def _do_copy(self, stage: Stage, instr: Instruction, meta_args: dict[str, str],
                       done: list[Stage]) -> None:
        await self._copy(stage, instr, done, add=False)

    async def _do_add(self, stage: Stage, instr: Instruction, meta_args: dict[str, str],
                      done: list[Stage]) -> None:
        await self._copy(stage, instr, done, add=True)

    async def _copy(self, stage: Stage, instr: Instruction, done: list[Stage], *, add: bool) -> None:
        word = "ADD" if add else "COPY"
        words = [self._word(stage, w) for w in instr.args]
        sources, dest = words[:-1], words[-1]
        if not posixpath.isabs(dest):
            base = stage.config.get("WorkingDir") or "/"
            dest = posixpath.join(base, dest) + ("/" if dest.endswith("/") or dest in (".", "./") else "")
        chmod = copying.parse_chmod(instr.flags["chmod"]) if "chmod" in instr.flags else None
        source_from = self._word(stage, instr.flags["from"]) if "from" in instr.flags else ""
        source = await self._source_stage(source_from, done) if source_from else None
        if source is not None:  # the copied files of the source stage, as dockerd keys it
            async with self._source_root(source) as src_fd:
                content = await trio.to_thread.run_sync(copying.source_digest, src_fd, sources, word)
        else:
            content = await trio.to_thread.run_sync(self._context_digest, sources, word)
        flags = {name: self._word(stage, value) for name, value in sorted(instr.flags.items())}
        step = (self._parent(stage), self._key(stage, word, sources=sources, dest=dest, flags=flags, content=content,
                                                shown=instr.args[-1]))
        if await self._hit(stage, step):
            return
        async with self.container(stage) as actor:
            from engine.supervisor.container_verbs import open_root

            async with open_root(actor, with_mounts=False) as root_fd:
                uid, gid = 0, 0
                if "chown" in instr.flags:
                    uid, gid = await trio.to_thread.run_sync(_chown_ids, root_fd, self._word(stage, instr.flags["chown"]))
                request = copying.CopyRequest(sources=sources, dest=dest, uid=uid, gid=gid, chmod=chmod,
                                              extract_archives=add, instruction=word)
                if source is not None:
                    async with self._source_root(source) as src_fd:
                        digest = await trio.to_thread.run_sync(copying.copy_into, src_fd, root_fd, request)
                else:
                    src_fd = await trio.to_thread.run_sync(os.open, self.context, os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
                    try:
                        digest = await trio.to_thread.run_sync(copying.copy_into, src_fd, root_fd, request)
                    finally:
                        os.close(src_fd)
            shown = instr.args[-1]
            await self._commit(stage, actor, f"{NOP}{word} {digest} in {shown} ", empty_ok=True, step=step)
        await self._step_done(stage)

    def _context_digest(self, sources: list[str], instruction: str) -> str:
        """The checksum of the context's files a COPY/ADD copies (blocking)."""
        fd = os.open(self.context, os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
        try:
            return copying.source_digest(fd, sources, instruction)
        finally:
            os.close(fd)

    async def _source_stage(self, source: str, done: list[Stage]) -> Stage:
        """COPY --from's source: a previous stage (by name or index) or an image."""
        stage: Stage | None = None
        if source.isdigit():
            index = int(source)
            if index >= len(done):
                raise InvalidArgument(f"invalid from flag value {source}: refers to current build stage or later")
            stage = done[index]
        else:
            stage = next((s for s in done if s.name == source.lower()), None)
        if stage is None:
            image = await self.base_image(source)
            stage = Stage(index=-1, name="", image=image, raw=json.loads(image.config.raw))
            stage.config = stage.raw.pop("config", None) or {}
        return stage

    @asynccontextmanager
    async def _source_root(self, stage: Stage) -> AsyncIterator[int]:
        """COPY --from's source stage as a root fd: its layers mounted read-only by the
        storage driver (no container, as dockerd), unmounted when done. A mount left by
        a crash is removed at start-up (reconcile's stale mounts)."""
        driver = self.app.storage()
        mount_id = "build-" + secrets.token_hex(16)
        layers = list(stage.image.diff_ids) if stage.image is not None else []
        try:
            path = await driver.mount(mount_id, layers, read_only=True)
            fd = await trio.to_thread.run_sync(os.open, path, os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
            try:
                yield fd
            finally:
                os.close(fd)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(REMOVE_WAIT):
                try:
                    await driver.remove_container(mount_id)
                except EngineError as e:
                    log.warning("build: removing the mount of %s: %s", mount_id, e)

    # --- containers and commits -----------------------------------------------------------------

    @asynccontextmanager
    async def container(self, stage: Stage, *, announce: bool = False, cmd: list[str] | None = None,
                        env: list[str] | None = None) -> AsyncIterator[ContainerActor]:
        """A container of the stage's image for one step, removed when the step ends
        (shielded: also when it failed or the client went away)."""
        from engine.supervisor.container_service import ContainerService, CreateSpec

        if stage.image is None:  # FROM scratch and nothing yet: an empty image to stand on
            step = (SCRATCH, self._key(stage, "", base=True))
            empty = None if self.options.no_cache else self.cache.lookup(*step)
            if empty is not None:
                self._use(stage, empty)
            else:
                await self._record(stage, "", step=step)
        assert stage.image is not None
        service = ContainerService(self.app)
        network = self.options.network_mode
        if network in ("", "default"):
            network = ""
        spec = CreateSpec(image=stage.image.id, cmd=cmd or ["/bin/sh"], entrypoint=[], env=list(env or []),
                          network=network, no_healthcheck=True,
                          labels={})
        actor = await service.create(spec)
        ok = False
        try:
            if announce:
                await self.say(f" ---> Running in {actor.id[:12]}\n")
            yield actor
            ok = True
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(REMOVE_WAIT):
                try:
                    await actor.call(c.Remove(force=True))
                except NotFound:
                    pass
                except EngineError as e:
                    log.warning("build: removing container %s: %s", actor.id[:12], e)
            if announce and ok:  # dockerd says it only of a step that succeeded
                await self.say(f"Removing intermediate container {actor.id[:12]}\n")

    async def _commit(self, stage: Stage, actor: ContainerActor, created_by: str, *, empty_ok: bool,
                      step: tuple[str, str], drop_targets: bool = False) -> None:
        """The container's changes as the stage's next image (no layer when it changed
        nothing)."""
        storage = self.app.storage()
        changes = await storage.changes(actor.id)
        added = {path for kind, path in changes if kind == "A"}
        meaningful = [p for k, p in changes if not (drop_targets and k == "A" and p in RUNTIME_MOUNT_TARGETS)]
        if not meaningful and empty_ok:
            await self._record(stage, created_by, step=step)
            return
        scratch = await layer_scratch(self.store)
        try:
            layer = scratch / "layer.tar"
            await storage.diff_layer(actor.id, layer)
            if drop_targets:
                await trio.to_thread.run_sync(drop_mount_targets, layer, added & RUNTIME_MOUNT_TARGETS)
            await self._record(stage, created_by, layer, step=step)
        finally:
            await remove_scratch(scratch)


def _make_dirs(root_fd: int, path: str) -> None:
    """``mkdir -p`` inside the root (each level resolved in it), root's, 0755."""
    from engine.store.treetar import DIR_FLAGS
    from engine.supervisor.copy import open_in_root

    current = "/"
    for part in [p for p in path.split("/") if p]:
        parent_fd = open_in_root(root_fd, current, DIR_FLAGS & ~os.O_NOFOLLOW)
        try:
            try:
                os.mkdir(part, 0o755, dir_fd=parent_fd)
            except FileExistsError:
                pass
        finally:
            os.close(parent_fd)
        current = posixpath.join(current, part)
    open_check = open_in_root(root_fd, path, DIR_FLAGS & ~os.O_NOFOLLOW)
    os.close(open_check)


def _chown_ids(root_fd: int, spec: str) -> tuple[int, int]:
    """``--chown=user[:group]`` against the image's /etc/passwd and /etc/group (names) or
    numbers; a user alone takes the user's group as dockerd does... when the user is a
    name; a number alone takes the same number as group."""
    from engine.oci.user import resolve_user

    user, _, group = spec.partition(":")
    if user.isdigit() and (not group or group.isdigit()):
        return int(user), int(group or user)
    resolved = resolve_user(Path(f"/proc/self/fd/{root_fd}"), spec)
    gid = resolved.gid if group or not user.isdigit() else resolved.uid
    return resolved.uid, gid

