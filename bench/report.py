"""Results as JSON, a markdown report and a PNG plot, plus the issue's targets checked
against figures from the same run."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

MB = 1024  # kB per MiB: memory targets are read as MiB


def _row(table: dict[str, Any] | None, label: str) -> dict[str, Any] | None:
    if not table:
        return None
    return next((r for r in table["rows"] if r["label"] == label), None)


def paired_ratio(table: dict[str, Any] | None, a: str, b: str) -> float | None:
    """Median of round-by-round ratios a/b (rows of one interleaved table)."""
    ra, rb = _row(table, a), _row(table, b)
    if not ra or not rb:
        return None
    pairs = [x / y for x, y in zip(ra["times"], rb["times"], strict=False)
             if x == x and y == y and y > 0]
    return statistics.median(pairs) if pairs else None


def per_container_kb(engine_mem: dict[str, Any]) -> float | None:
    """Monitor RSS plus the daemon's growth per container, at the largest count measured."""
    running = {int(k): v for k, v in engine_mem.get("running", {}).items() if "error" not in v}
    if not running or "idle" not in engine_mem:
        return None
    n = max(running)
    growth = (running[n]["daemon"]["rss_kb"] - engine_mem["idle"]["rss_kb"]) / n
    return float(running[n]["monitor_rss_kb_median"]) + max(growth, 0.0)


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    s = res["scenarios"]
    n = res["plan"]["concurrency"]
    mem = res.get("memory") or {}
    lat, conc, pull, listing = s.get("latency"), s.get("concurrent"), s.get("pull"), s.get("listing")
    out: list[dict[str, Any]] = []

    def add(name: str, value: float | None, limit: float, unit: str) -> None:
        ok = None if value is None else value <= limit
        out.append({"target": name, "value": value, "limit": limit, "unit": unit, "met": ok})

    add("one container: engine (crun) / podman", paired_ratio(
        lat, "engine run --rm --network none (crun)", "podman run --rm --network none (crun)"), 0.5, "x")
    add("one container: engine (runc) / docker", paired_ratio(
        lat, "engine run --rm --network none (runc)", "docker run --rm --network none (runc)"), 0.3, "x")
    add(f"{n} at once: engine (crun) / podman", paired_ratio(
        conc, f"engine --network none (crun) x{n}", f"podman --network none (crun) x{n}"), 0.3, "x")
    add("pull: engine / podman", paired_ratio(pull, "engine pull", "podman pull"), 0.5, "x")
    add("pull: engine / docker", paired_ratio(pull, "engine pull", "docker pull"), 0.5, "x")
    eng = mem.get("engine", {})
    idle = eng.get("idle", {}).get("rss_kb")
    add("daemon idle RSS (MiB)", idle / MB if idle else None, 40, "MiB")
    per = per_container_kb(eng) if eng else None
    add("per running container, beyond its own processes (MiB RSS)", per / MB if per else None, 3, "MiB")
    ps = next((r for r in (listing or {}).get("rows", []) if r["label"].startswith("engine ps -a")), None)
    add("engctl ps -a with the containers present (s)", ps["median"] if ps else None, 0.1, "s")
    return out


# --- markdown ---------------------------------------------------------------------------------


def _f(x: float | None, digits: int = 4) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def table_md(t: dict[str, Any]) -> list[str]:
    lines = [f"### {t['title']}", "",
             f"{t['rounds']} interleaved rounds after {t['warmup']} warm-up; ratio = median of "
             f"the round-by-round ratios to **{t['baseline']}**.", "",
             "| variant | median s | min–max s | ratio | fails |", "|---|---|---|---|---|"]
    for r in t["rows"]:
        lines.append(f"| {r['label']} | {_f(r['median'])} | {_f(r['min'])}–{_f(r['max'])} | "
                     f"{_f(r['ratio_median'], 2)} | {r['fails']} |")
    for name, value in t.get("ratios", {}).items():
        lines += ["", f"**{name}: {_f(value, 3)}** (median of the round-by-round ratios)"]
    errs = [r for r in t["rows"] if r["last_error"]]
    if errs:
        lines.append("")
        for r in errs:
            err = r["last_error"][-300:].replace("`", "'").replace("\n", " ")
            lines.append(f"- {r['label']}: last error: `{err}`")
    return [*lines, ""]


def memory_md(mem: dict[str, Any]) -> list[str]:
    lines = ["### Memory (RSS / PSS from /proc)", "",
             "| engine | daemon idle RSS (PSS) kB | running | daemon RSS kB | monitor | monitor RSS (PSS) kB, median | per container kB |",
             "|---|---|---|---|---|---|---|"]
    for name, m in mem.items():
        if "error" in m:
            lines.append(f"| {name} | error: {m['error'][-200:]} | | | | | |")
            continue
        idle = m["idle"]
        for n, r in sorted(m["running"].items(), key=lambda kv: int(kv[0])):
            if "error" in r:
                lines.append(f"| {name} | {idle['rss_kb']} ({idle['pss_kb']}) | {n} | error: {r['error'][-200:]} | | | |")
                continue
            per = r["monitor_rss_kb_median"] + max(0.0, (r["daemon"]["rss_kb"] - idle["rss_kb"]) / int(n))
            lines.append(f"| {name} | {idle['rss_kb']} ({idle['pss_kb']}) | {n} | {r['daemon']['rss_kb']} | "
                         f"{', '.join(r['monitor'])} | {r['monitor_rss_kb_median']:.0f} "
                         f"({r['monitor_pss_kb_median']:.0f}) | {per:.0f} |")
    lines += ["", "Daemon = engined; dockerd + containerd; podman has none. Per container = the "
              "monitor's RSS plus the daemon's RSS growth divided by the number of containers.", ""]
    return lines


def markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = ["# Benchmarks: the engine against raw runtimes, podman and docker", "",
             f"Run {m['date']} ({'quick smoke mode' if res['quick'] else 'full run'}) with "
             "`scripts/bench.sh`. Timings are whole-process wall times. The machine is shared "
             "and noisy: read the ratios (same run, round by round) before the absolute times.", "",
             "| machine | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in m.items()]
    lines += ["", "## Targets (issue 6)", "", "| target | value | limit | met |", "|---|---|---|---|"]
    for t in res["targets"]:
        met = "n/a" if t["met"] is None else ("yes" if t["met"] else "**no**")
        lines.append(f"| {t['target']} | {_f(t['value'], 3)} | ≤ {t['limit']} | {met} |")
    api = res["scenarios"].get("docker_api")
    if api:
        lines += ["", "## Docker API (issue 14)", "",
                  "`docker run --rm --network none --runtime runc` with the same docker CLI "
                  "(Debian's 20.10), against dockerd and against `engined --docker-host`, "
                  "round by round (table below):", ""]
        lines += [f"- {name}: **{_f(value, 3)}**" + ("" if value is not None else " (no dockerd in this run)")
                  for name, value in api.get("ratios", {}).items()]
    lines += ["", "## Results", ""]
    if res.get("skipped"):
        lines += [f"- skipped: {s}" for s in res["skipped"]] + [""]
    for t in res["scenarios"].values():
        if t:
            lines += table_md(t)
    if res.get("memory"):
        lines += memory_md(res["memory"])
    if res.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in res["notes"]] + [""]
    lines += ["![results](results.png)", ""]
    return "\n".join(lines)


# --- plot ----------------------------------------------------------------------------------------

COLOURS = {"raw": "#888888", "engine": "#1f77b4", "podman": "#8c564b", "docker": "#2ca02c"}


def plot(res: dict[str, Any], dest: Path) -> str | None:
    """A PNG: one panel per timed table (median with min–max), one for memory. Returns why
    it was not drawn, if it was not."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (scripts/bench.sh installs it): no plot"
    tables = [t for t in res["scenarios"].values() if t]
    panels = len(tables) + (1 if res.get("memory") else 0)
    if not panels:
        return "nothing to plot"
    fig, axes = plt.subplots(panels, 1, figsize=(10, 2.2 + sum(
        0.32 * len(t["rows"]) for t in tables) / max(1, panels) * panels), squeeze=False)
    for ax, t in zip(axes[:, 0], tables, strict=False):
        rows = [r for r in t["rows"] if r["median"] is not None]
        labels = [r["label"] for r in rows]
        med = [r["median"] for r in rows]
        err = [[r["median"] - r["min"] for r in rows], [r["max"] - r["median"] for r in rows]]
        ax.barh(labels, med, xerr=err, color=[COLOURS.get(r["group"], "#999") for r in rows])
        ax.invert_yaxis()
        ax.set_xlabel("seconds (median, min–max)")
        ax.set_title(t["title"], fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
    if res.get("memory"):
        ax = axes[-1, 0]
        labels, vals, cols = [], [], []
        for name, m in res["memory"].items():
            if "idle" in m:
                labels.append(f"{name} daemon idle")
                vals.append(m["idle"]["rss_kb"] / MB)
                cols.append(COLOURS.get(name, "#999"))
            per = per_container_kb(m) if "idle" in m else None
            if per is not None:
                labels.append(f"{name} per container")
                vals.append(per / MB)
                cols.append(COLOURS.get(name, "#999"))
        ax.barh(labels, vals, color=cols)
        ax.invert_yaxis()
        ax.set_xlabel("MiB RSS")
        ax.set_title("memory", fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
    fig.suptitle(f"engine benchmarks, {res['machine']['date']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(dest, dpi=110)
    plt.close(fig)
    return None


def write_all(res: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=1))
    why = plot(res, out / "results.png")
    if why:
        res.setdefault("notes", []).append(why)
    (out / "results.md").write_text(markdown(res))
    return [out / "results.json", out / "results.md", *([] if why else [out / "results.png"])]
