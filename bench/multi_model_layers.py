"""Bytes a release of several models moves when one model changes: each model is its own last layer of the
runtime image, so changing the policy alone (or the detector alone) should move that model's layer only.

Builds (``edge_deploy.images.build_images`` with a model set) run against the local registry with the
stand-in L4T base, tagged under ``<registry>/edge-deploy-bench/``: a detector-like CNN (ONNX, fp32) and
the sample policy (fp16) with a pipeline, then the policy alone changed (fp32), then the detector alone
changed (new weights), all three from one staged copy of the tool's files (so code never differs, even
while a shared working tree is edited). Bytes are compressed blob sizes as the registry stores them, counted as
bench/images.py counts them (the new arm64 manifest's blobs the previous one lacks, plus config and
manifest): what a push uploads and a robot holding the previous release pulls.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from bench.images import PLATFORM, REGISTRY, _dir_bytes, _image, _moved, build_pushed, require_harness

NAME = "multi_model_layers"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--layers-base",
        default=f"{REGISTRY}/edge-deploy/l4t-standin:r36.4",
        help="multi_model_layers: L4T base for the runtime (and converter) image",
    )
    parser.add_argument(
        "--layers-runtime-python", default="3.11", help="multi_model_layers: Python of the base"
    )


def _models_file(work: Path, policy_precision: str, detector: str) -> Path:
    path = work / f"models-{policy_precision}-{Path(detector).stem}.yaml"
    path.write_text(
        "models:\n"
        f"  - {{name: detector, path: {detector}, precision: fp32}}\n"
        f"  - {{name: policy, path: policy.pt, precision: {policy_precision}}}\n"
        "pipelines: pipelines.json\n"
    )
    return path


def run(args: Any = None) -> dict[str, Any]:
    from tests.build.multi_models import write_detector

    from edge_deploy.images import load_models_file
    from edge_deploy.images.files import stage_context
    from edge_deploy.model.sample import write_sample_policy

    require_harness()
    base = getattr(args, "layers_base", None) or f"{REGISTRY}/edge-deploy/l4t-standin:r36.4"
    python = getattr(args, "layers_runtime_python", None) or "3.11"
    work = Path(tempfile.mkdtemp(prefix="bench-multi-layers-"))
    builds: dict[str, dict[str, Any]] = {}

    def build(label: str, models_file: Path) -> dict[str, Any]:
        out, seconds, ref = build_pushed(
            NAME,
            label,
            base,
            python,
            source=source,  # one copy of the tool's files for all three builds: only models differ
            models=load_models_file(models_file),
            version=f"bench-mm-{label}",
            bundle_out=work / f"bundles-{label}",
        )
        builds[label] = {
            "seconds": round(seconds, 1),
            "image": _image(ref),
            "bundles": {m["name"]: _dir_bytes(work / f"bundles-{label}" / m["name"]) for m in out.models},
        }
        return builds[label]

    source = stage_context(work / "context")
    try:
        write_detector(work / "detector.onnx")
        write_detector(work / "detector-v2.onnx", seed=8)
        write_sample_policy(work / "policy.pt")
        steps = [{"model": "detector"}, {"model": "policy", "inputs": {"robot_state": "detector.detections"}}]
        (work / "pipelines.json").write_text(
            json.dumps({"version": 1, "pipelines": [{"name": "act", "steps": steps}]})
        )
        first = build("two-models", _models_file(work, "fp16", "detector.onnx"))
        policy = build("policy-only", _models_file(work, "fp32", "detector.onnx"))
        detector = build("detector-only", _models_file(work, "fp32", "detector-v2.onnx"))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    layers = list(first["image"]["layers"].values())
    rows = [
        {
            "release": "two models (detector fp32 + policy fp16)",
            "layers_changed": len(layers),
            "layer_bytes": sum(layers),
            "bytes_moved": first["image"]["layer_bytes"] + first["image"]["manifest_bytes"],
            "model_bundle_bytes": sum(first["bundles"].values()),
            "build_s": first["seconds"],
        }
    ]
    for label, changed, prev, new in (
        ("policy only (fp16 → fp32)", "policy", first, policy),
        ("detector only (new weights)", "detector", policy, detector),
    ):
        moved = _moved(prev["image"], new["image"])
        rows.append(
            {
                "release": label,
                "layers_changed": moved["layers_changed"],
                "layer_bytes": moved["layer_bytes"],
                "bytes_moved": moved["bytes"],
                "model_bundle_bytes": new["bundles"][changed],
                "build_s": new["seconds"],
            }
        )
    return {
        "rows": rows,
        "platform": PLATFORM,
        "image_layer_bytes": first["image"]["layer_bytes"],
        "note": "the first row is the whole image (every layer, base included); the others what a robot "
        "holding the row above pulls",
    }
