"""PNG plots next to the JSON results: latency distributions (precision, service overhead) and rollout
timelines (fleet), drawn from whatever bench/results/*.json holds; a missing result is skipped, not faked.

Run: ``python -m bench plots`` (after the benchmarks it draws from).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

NAME = "plots"
RESULTS = Path(__file__).parent / "results"
STEP_COLOURS = {
    "preflight": "#999999",
    "lock": "#cccccc",
    "upload": "#8c564b",
    "pull": "#1f77b4",
    "switch": "#bcbd22",
    "up": "#ff7f0e",
    "health": "#2ca02c",
    "rollback": "#d62728",
}
STEP_ORDER = ("preflight", "lock", "upload", "pull", "switch", "up", "health")


def _load(out: Path, name: str) -> dict[str, Any] | None:
    path = out / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_precision(res: dict[str, Any], dest: Path) -> Path:
    """Box plots of every timed call per precision, one panel per batch size."""
    plt = _pyplot()
    samples: dict[str, list[float]] = res["samples_ms"]
    batches = sorted({int(k.split(" b")[1]) for k in samples})
    fig, axes = plt.subplots(1, len(batches), figsize=(5 * len(batches), 4), squeeze=False)
    for ax, batch in zip(axes[0], batches, strict=True):
        keys = [k for k in samples if k.endswith(f" b{batch}")]
        ax.boxplot([samples[k] for k in keys], showfliers=True, flierprops={"markersize": 2})
        ax.set_xticks(range(1, len(keys) + 1), [k.split()[0] for k in keys])
        ax.set_yscale("log")
        ax.set_title(f"batch {batch}: ONNX Runtime CPU latency")
        ax.set_ylabel("ms per call (log)")
    fig.suptitle(
        f"precision: {res['machine']['cpu']}, {res.get('intra_op_threads', '?')} thread(s), "
        f"{res['repeats']}x{res['runs']} calls"
    )
    fig.tight_layout()
    fig.savefig(dest, dpi=110)
    plt.close(fig)
    return dest


def plot_service_overhead(res: dict[str, Any], dest: Path) -> Path:
    """p50 and p99 per request path (raw engine call vs HTTP with each body format)."""
    plt = _pyplot()
    rows = res["rows"]
    labels = [f"{r.get('model', '')}\n{r['path']}" for r in rows]
    y = range(len(rows))
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.5))
    ax.barh([i + 0.2 for i in y], [r["p99_ms"] for r in rows], height=0.4, label="p99", color="#ff7f0e")
    ax.barh([i - 0.2 for i in y], [r["p50_ms"] for r in rows], height=0.4, label="p50", color="#1f77b4")
    ax.set_yticks(list(y), labels, fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("ms (log)")
    ax.invert_yaxis()
    ax.legend()
    ax.set_title(f"service overhead ({res.get('machine', '')}, {res.get('runs', '?')} runs)")
    fig.tight_layout()
    fig.savefig(dest, dpi=110)
    plt.close(fig)
    return dest


def plot_fleet(res: dict[str, Any], dest: Path) -> Path:
    """One stacked bar per robot and operation: the steps of its update, in order, in seconds."""
    plt = _pyplot()
    rows = res["rows"]
    fig, axes = plt.subplots(
        len(rows),
        1,
        figsize=(10, 1.0 + 0.35 * sum(len(r["per_robot"]) for r in rows)),
        squeeze=False,
        sharex=True,
        gridspec_kw={"height_ratios": [max(1, len(r["per_robot"])) for r in rows]},
    )
    seen: set[str] = set()
    for ax, row in zip(axes[:, 0], rows, strict=True):
        for i, robot in enumerate(row["per_robot"]):
            t = 0.0
            timings = robot["timings"]
            steps = [s for s in STEP_ORDER if s in timings] or [s for s in ("rollback",) if s in timings]
            for step in steps:
                ax.barh(
                    i,
                    timings[step],
                    left=t,
                    color=STEP_COLOURS[step],
                    label=step if step not in seen else None,
                )
                seen.add(step)
                t += timings[step]
        ax.set_yticks(range(len(row["per_robot"])), [r["robot"] for r in row["per_robot"]], fontsize=7)
        ax.set_ylabel(f"{row['robots']}: {row['operation']}", rotation=0, ha="right", va="center", fontsize=8)
        ax.invert_yaxis()
    axes[-1, 0].set_xlabel("seconds since the robot's update began")
    fig.legend(loc="lower center", fontsize=7, ncol=len(STEP_COLOURS))
    fig.suptitle(f"rollout timelines ({res.get('machine', '')})", fontsize=9)
    fig.tight_layout(rect=(0, 0.03, 1, 0.97))
    fig.savefig(dest, dpi=110)
    plt.close(fig)
    return dest


def run(args: Any = None) -> dict[str, Any]:
    out: Path = getattr(args, "out", None) or RESULTS
    drawn: list[dict[str, Any]] = []
    for name, draw in (
        ("precision", plot_precision),
        ("service_overhead", plot_service_overhead),
        ("fleet", plot_fleet),
    ):
        res = _load(out, name)
        if res is None:
            drawn.append({"plot": f"{name}.png", "status": f"skipped: no {name}.json"})
            continue
        path = draw(res, out / f"{name}.png")
        drawn.append({"plot": path.name, "status": "written", "from": f"{name}.json"})
    return {"rows": drawn}
