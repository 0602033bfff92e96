"""Isolation between a daemon's bridge networks, docker's DOCKER-ISOLATION made ours.

The CNI bridge plugin turns on ip_forward and masquerades, so without extra rules the host
would route between two networks' bridges. Two chains in the filter table, jumped to from
FORWARD ahead of the firewall plugin's ACCEPTs, stop that:

    <chain 1>   -i <br> ! -o <br> -j <chain 2>         (each network's bridge)
                -i <internal br> ! -o <internal br> -j DROP
                -o <internal br> ! -i <internal br> -j DROP
    <chain 2>   -o <br> -j DROP                        (each network's bridge)

so traffic leaving one of our bridges for another of our bridges is dropped, and an internal
network talks to nothing but itself (and the host directly). A network created with
``com.docker.network.bridge.enable_icc=false`` gets ``-i <br> -o <br> -j DROP`` in chain 1:
its containers reach the host and the outside but not each other (bridged traffic passes
FORWARD with br_netfilter's bridge-nf-call-iptables on, which options.py requires).

The chains are the daemon's own: named after its default bridge (``ENGINE-ISO-<bridge>-1``
and ``-2``, see settings.NetworkSettings.chains), so engines on one host with different
bridges never rebuild each other's. Each daemon hooks its chain 1 into FORWARD with one rule,
added and removed idempotently. A rebuild is one ``iptables-restore --noflush``: the chains
change atomically, never seen half-built. They are removed when no network is in use.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable

import trio

from engine.errors import EngineError, RuntimeFailure
from engine.network._proc import run
from engine.network.networks import Network
from engine.network.settings import CHAIN_PREFIX

_COMMENT = "engine network isolation"
# Isolation jumps of other engines: ours need not come before them. ENGINE-ISOLATION- is the
# host-wide chain of engines from before per-daemon chains (they keep moving theirs first).
_ISOLATION_PREFIXES = (CHAIN_PREFIX, "ENGINE-ISOLATION-")
# One rebuild at a time in this process (two stores of one daemon share its chains).
_lock = trio.Lock()


class IsolationError(RuntimeFailure):
    """iptables refused a change to the isolation chains."""


def _jump(chain_1: str) -> list[str]:
    return ["-j", chain_1, "-m", "comment", "--comment", _COMMENT]


async def _ipt(*args: str, check: bool = True) -> int:
    try:
        proc = await run(["iptables", "-w", "5", "-t", "filter", *args], check=check)
    except EngineError as e:
        raise IsolationError(f"updating the network isolation rules failed: {e}") from None
    return proc.returncode


def _rules_1(networks: list[Network], chain_2: str) -> list[list[str]]:
    rules = []
    for net in networks:
        if not net.icc:  # enable_icc=false: nothing between the bridge's own ports
            rules.append(["-i", net.bridge, "-o", net.bridge, "-j", "DROP"])
        if net.internal:
            rules.append(["-i", net.bridge, "!", "-o", net.bridge, "-j", "DROP"])
            rules.append(["-o", net.bridge, "!", "-i", net.bridge, "-j", "DROP"])
    for net in networks:
        rules.append(["-i", net.bridge, "!", "-o", net.bridge, "-j", chain_2])
    return rules


def _rules_2(networks: list[Network]) -> list[list[str]]:
    return [["-o", net.bridge, "-j", "DROP"] for net in networks]


def restore_input(chains: tuple[str, str], networks: list[Network]) -> str:
    """iptables-restore input that (re)defines both chains; declaring a chain flushes it."""
    chain_1, chain_2 = chains
    lines = ["*filter", f":{chain_1} - [0:0]", f":{chain_2} - [0:0]"]
    # Plain words: bridge names hold no spaces or quotes (settings and networks check them).
    lines += [" ".join(["-A", chain_1, *r]) for r in _rules_1(networks, chain_2)]
    lines.append(f"-A {chain_1} -j RETURN")
    lines += [" ".join(["-A", chain_2, *r]) for r in _rules_2(networks)]
    lines += [f"-A {chain_2} -j RETURN", "COMMIT", ""]
    return "\n".join(lines)


def _target(rule: str) -> str:
    words = shlex.split(rule)
    return words[words.index("-j") + 1] if "-j" in words[:-1] else ""


async def _ensure_jump_first(chain_1: str) -> None:
    """Our jump must come before the firewall plugin's ACCEPTs (which it inserts first).
    Other engines' isolation jumps may come before ours: each one only drops traffic of its
    own bridges, so their order among themselves does not matter (and they never fight)."""
    try:
        proc = await run(["iptables", "-w", "5", "-t", "filter", "-S", "FORWARD"])
    except EngineError as e:
        raise IsolationError(f"reading the FORWARD chain failed: {e}") from None
    for line in proc.stdout.decode().splitlines():
        if not line.startswith("-A "):
            continue
        target = _target(line)
        if target == chain_1:
            return
        if not target.startswith(_ISOLATION_PREFIXES):
            break  # a foreign rule comes first: put ours in front
    while await _ipt("-D", "FORWARD", *_jump(chain_1), check=False) == 0:
        pass
    await _ipt("-I", "FORWARD", "1", *_jump(chain_1))


async def sync(chains: tuple[str, str], networks: Iterable[Network]) -> None:
    """Make the daemon's isolation ``chains`` match ``networks`` (the bridge networks in use)."""
    active = sorted((n for n in networks if not n.is_pseudo), key=lambda n: n.bridge)
    async with _lock:
        if not active:
            await remove(chains)
            return
        try:
            await run(["iptables-restore", "-w", "5", "--noflush"],
                      stdin=restore_input(chains, active).encode())
        except EngineError as e:
            raise IsolationError(f"rebuilding the network isolation chains {chains[0]}/{chains[1]} "
                                 f"failed: {e}") from None
        await _ensure_jump_first(chains[0])


async def remove(chains: tuple[str, str]) -> None:
    """Unhook and delete the chains (absent is fine)."""
    chain_1, chain_2 = chains
    while await _ipt("-D", "FORWARD", *_jump(chain_1), check=False) == 0:
        pass
    for chain in (chain_1, chain_2):  # chain 1 refers to chain 2: empty both, then delete
        if await _ipt("-n", "-L", chain, check=False) == 0:
            await _ipt("-F", chain)
    for chain in (chain_1, chain_2):
        if await _ipt("-n", "-L", chain, check=False) == 0:
            await _ipt("-X", chain)
