"""Run benchmarks by name (or all), print a table each, and write bench/results/<name>.json.

Register a benchmark by adding its module to BENCHMARKS; the module exposes ``run(args) -> dict`` and,
optionally, ``add_arguments(parser)`` for its own flags. A result's ``rows`` (list of dicts) print as a
table; its other top-level scalars print as ``key: value`` lines.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCHMARKS: dict[str, str] = {
    "startup": "bench.startup",
    "service_overhead": "bench.service_overhead",
    "gpu_precision": "bench.gpu_precision",
    "tensorrt_cuda": "bench.tensorrt_cuda",
    "precision": "bench.precision",
    "images": "bench.images",
    "fleet": "bench.fleet",
    "plots": "bench.plots",
    "ros2": "bench.ros2",
    "ros2_handover": "bench.ros2_handover",
    "large_model": "bench.large_model",
    "multi_model": "bench.multi_model",
    "multi_model_layers": "bench.multi_model_layers",
    "pull": "bench.pull",
    "downtime": "bench.downtime",
    "direct_deploy": "bench.direct_deploy",
}
# Run only when named: large_model writes a 2 GB model and needs about 11 GiB of memory and 10 minutes.
OPT_IN: frozenset[str] = frozenset({"large_model"})
RESULTS = Path(__file__).parent / "results"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def table(rows: list[dict[str, Any]]) -> str:
    cols: list[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols and not isinstance(r[c], (dict, list))]
    cells = [[_fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)),
        "  ".join("-" * w for w in widths),
    ]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def render(name: str, result: dict[str, Any]) -> str:
    out = [f"== {name} =="]
    for k, v in result.items():
        if k != "rows" and not isinstance(v, (dict, list)):
            out.append(f"{k}: {_fmt(v)}")
    if result.get("rows"):
        out.append(table(result["rows"]))
    return "\n".join(out)


def write_result(name: str, result: dict[str, Any], out_dir: Path = RESULTS) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    fd, tmp = tempfile.mkstemp(dir=out_dir, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "names",
        nargs="*",
        help=(
            f"benchmarks to run (default: all but {', '.join(sorted(OPT_IN))}, which run only when named): "
            f"{', '.join(BENCHMARKS)}"
        ),
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of tables")
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for <name>.json results")
    parser.add_argument(
        "--repeats", type=int, default=None, help="repeats per measurement (benchmark default)"
    )
    parser.add_argument(
        "--runs", type=int, default=None, help="timed calls per measurement (benchmark default)"
    )
    modules: dict[str, Any] = {}  # the module, or the ImportError that kept it out
    for name, module in BENCHMARKS.items():
        try:
            modules[name] = importlib.import_module(module)
        except ImportError as exc:  # a benchmark whose dependencies are absent here
            modules[name] = exc
        else:
            if hasattr(modules[name], "add_arguments"):
                modules[name].add_arguments(parser)
    args = parser.parse_args(argv)
    names = args.names or [n for n in BENCHMARKS if n not in OPT_IN]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {unknown[0]!r}; choose from {', '.join(BENCHMARKS)}")
    results: dict[str, Any] = {}
    failed = 0
    for name in names:
        mod = modules[name]
        if isinstance(mod, ImportError):
            print(f"{name}: skipped, cannot import ({mod})", file=sys.stderr)
            continue
        t0 = time.monotonic()
        try:
            result = mod.run(args)
        except SystemExit as exc:  # a benchmark that cannot run here says why
            print(f"{name}: skipped: {exc}", file=sys.stderr)
            continue
        except Exception as exc:
            print(f"{name}: failed: {exc!r}", file=sys.stderr)
            failed += 1
            continue
        result.setdefault("benchmark", name)
        result.setdefault("seconds", round(time.monotonic() - t0, 2))
        write_result(name, result, args.out)
        results[name] = result
        if not args.json:
            print(render(name, result) + "\n")
    if args.json:
        print(json.dumps(results, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
