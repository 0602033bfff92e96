"""Isolation between the engine's bridge networks, docker's DOCKER-ISOLATION made ours.

The CNI bridge plugin turns on ip_forward and masquerades, so without extra rules the host
would route between two networks' bridges. Two chains in the filter table, jumped to first
from FORWARD, stop that:

    ENGINE-ISOLATION-1   -i <br> ! -o <br> -j ENGINE-ISOLATION-2   (each network's bridge)
                         -i <internal br> ! -o <internal br> -j DROP
                         -o <internal br> ! -i <internal br> -j DROP
    ENGINE-ISOLATION-2   -o <br> -j DROP                           (each network's bridge)

so traffic leaving one of our bridges for another of our bridges is dropped, and an internal
network talks to nothing but itself (and the host directly). The chains are rebuilt from the
networks in use on every change, and removed entirely when no network is in use.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from engine.network._proc import run
from engine.network.networks import Network

CHAIN_1 = "ENGINE-ISOLATION-1"
CHAIN_2 = "ENGINE-ISOLATION-2"
HOST_LOCK = Path("/run/lock/engine-isolation.lock")
_JUMP = ["-j", CHAIN_1, "-m", "comment", "--comment", "engine network isolation"]
# One rebuild at a time in this process; iptables' own lock (-w) covers other processes.
_lock = trio.Lock()


async def _ipt(*args: str, check: bool = True) -> int:
    proc = await run(["iptables", "-w", "5", "-t", "filter", *args], check=check)
    return proc.returncode


async def _chain_exists(chain: str) -> bool:
    return await _ipt("-n", "-L", chain, check=False) == 0


def _rules_1(networks: list[Network]) -> list[list[str]]:
    rules = []
    for net in networks:
        if net.internal:
            rules.append(["-i", net.bridge, "!", "-o", net.bridge, "-j", "DROP"])
            rules.append(["-o", net.bridge, "!", "-i", net.bridge, "-j", "DROP"])
    for net in networks:
        rules.append(["-i", net.bridge, "!", "-o", net.bridge, "-j", CHAIN_2])
    return rules


def _rules_2(networks: list[Network]) -> list[list[str]]:
    return [["-o", net.bridge, "-j", "DROP"] for net in networks]


async def _ensure_jump_first() -> None:
    """Our jump must come before the firewall plugin's ACCEPTs (which it inserts first)."""
    proc = await run(["iptables", "-w", "5", "-t", "filter", "-S", "FORWARD"])
    rules = [line for line in proc.stdout.decode().splitlines() if line.startswith("-A ")]
    if rules and f"-j {CHAIN_1}" in rules[0]:
        return
    while await _ipt("-D", "FORWARD", *_JUMP, check=False) == 0:
        pass
    await _ipt("-I", "FORWARD", "1", *_JUMP)


async def sync(networks: Iterable[Network]) -> None:
    """Make the isolation chains match ``networks`` (the bridge networks in use)."""
    active = sorted((n for n in networks if not n.is_pseudo), key=lambda n: n.bridge)
    async with _lock, _host_lock():
        if not active:
            await _remove()
            return
        for chain in (CHAIN_1, CHAIN_2):
            if not await _chain_exists(chain):
                await _ipt("-N", chain)
            await _ipt("-F", chain)
        for rule in _rules_1(active):
            await _ipt("-A", CHAIN_1, *rule)
        await _ipt("-A", CHAIN_1, "-j", "RETURN")
        for rule in _rules_2(active):
            await _ipt("-A", CHAIN_2, *rule)
        await _ipt("-A", CHAIN_2, "-j", "RETURN")
        await _ensure_jump_first()


@asynccontextmanager
async def _host_lock() -> AsyncIterator[None]:
    """The chains are host-wide: serialise their rebuild across engine processes too (an
    flock taken in a thread; released when the file is closed)."""
    HOST_LOCK.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(HOST_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        await trio.to_thread.run_sync(fcntl.flock, fd, fcntl.LOCK_EX, abandon_on_cancel=False)
        yield
    finally:
        os.close(fd)


async def _remove() -> None:
    while await _ipt("-D", "FORWARD", *_JUMP, check=False) == 0:
        pass
    for chain in (CHAIN_1, CHAIN_2):
        if await _chain_exists(chain):
            await _ipt("-F", chain)
    for chain in (CHAIN_1, CHAIN_2):
        if await _chain_exists(chain):
            await _ipt("-X", chain)
