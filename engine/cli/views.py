"""The rows ``--format`` templates see, with docker's CLI field names (its "contexts"):
``{{.ID}}``, ``{{.Names}}``, ``{{.Status}}``, ``{{.Label "k"}}`` for ps; ``{{.Repository}}``,
``{{.Tag}}`` for images; ``{{.CPUPerc}}``, ``{{.MemUsage}}`` for stats."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# docker's column titles for these fields in `table` formats
PS_HEADERS = {"ID": "CONTAINER ID", "RunningFor": "CREATED", "CreatedAt": "CREATED AT"}
IMAGE_HEADERS = {"ID": "IMAGE ID", "CreatedSince": "CREATED", "CreatedAt": "CREATED AT"}
STATS_HEADERS = {"ID": "CONTAINER ID", "Container": "CONTAINER", "CPUPerc": "CPU %",
                 "MemUsage": "MEM USAGE / LIMIT", "MemPerc": "MEM %", "NetIO": "NET I/O",
                 "BlockIO": "BLOCK I/O", "PIDs": "PIDS"}


def ps_row(r: dict[str, Any], no_trunc: bool) -> dict[str, Any]:
    import time

    from engine.humanize import human_duration

    labels = r.get("Labels") or {}
    ports = ", ".join(f"{p.get('IP') or '0.0.0.0'}:{p['PublicPort']}->{p['PrivatePort']}/{p['Type']}"
                      for p in r.get("Ports") or [])
    return {
        "ID": r["Id"] if no_trunc else r["Id"][:12],
        "Image": r["Image"],
        "Command": '"' + r["Command"] + '"',
        "CreatedAt": time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(r["Created"])),
        "RunningFor": f"{human_duration(time.time() - r['Created'])} ago",
        "Ports": ports,
        "State": r["State"],
        "Status": r["Status"],
        "Names": ",".join(r["Names"]),
        "Labels": ",".join(f"{k}={v}" for k, v in sorted(labels.items())),
        "Label": lambda key: labels.get(key, ""),
        "Runtime": r.get("Runtime", ""),
    }


def image_rows(r: dict[str, Any], no_trunc: bool, created_since: str) -> list[dict[str, Any]]:
    from engine.humanize import human_size

    image_id = r["Id"] if no_trunc else r["Id"].removeprefix("sha256:")[:12]
    rows = []
    for name in r["RepoTags"] or ["<none>:<none>"]:
        repo, _, tag = name.rpartition(":") if ":" in name.rsplit("/", 1)[-1] else (name, "", "<none>")
        digest = next((d.rpartition("@")[2] for d in r["RepoDigests"] if d.startswith(repo + "@")), "<none>")
        rows.append({"ID": image_id, "Repository": repo, "Tag": tag, "Digest": digest,
                     "CreatedSince": created_since, "CreatedAt": r.get("Created", ""),
                     "Size": human_size(r["Size"]), "Containers": "N/A"})
    return rows


def stats_row(item: dict[str, Any], no_trunc: bool = False) -> dict[str, Any]:
    def pair(a: int, b: int) -> str:
        return f"{_si(a)} / {_si(b)}"

    return {
        "ID": item["Id"] if no_trunc else item["Id"][:12],
        "Container": item["Name"],
        "Name": item["Name"],
        "CPUPerc": f"{item['CPUPercent']:.2f}%",
        "MemUsage": f"{_binary(item['MemoryUsage'])} / {_binary(item['MemoryLimit'])}",
        "MemPerc": f"{item['MemoryPercent']:.2f}%",
        "NetIO": pair(item["NetRx"], item["NetTx"]),
        "BlockIO": pair(item["BlockRead"], item["BlockWrite"]),
        "PIDs": str(item["Pids"]),
    }


def _binary(n: float) -> str:
    """docker's BytesSize: 1.5MiB."""
    units = ["B", "KiB", "MiB", "GiB", "TiB"]
    i = 0
    while n >= 1024 and i < len(units) - 1:
        n /= 1024
        i += 1
    return f"{n:.4g}{units[i]}"


def _si(n: float) -> str:
    """docker's HumanSizeWithPrecision: 1.2kB, 3.4MB."""
    units = ["B", "kB", "MB", "GB", "TB"]
    i = 0
    while n >= 1000 and i < len(units) - 1:
        n /= 1000
        i += 1
    return f"{n:.3g}{units[i]}"
