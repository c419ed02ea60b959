"""One robot with no registry (``python -m bench direct_deploy``): bytes sent over SSH and time for a first
``deploy_direct`` (the robot has nothing) and for a model-only change (new weights, same graph), against
one simulated robot (its own sshd + dockerd, arm64 under QEMU). The bytes are what the host's ssh-copy
registry served the robot's engine (``image_bytes``); the bundle's size is what the model weighs.

Needs root and the host harness (scripts/host-setup: engine binaries, the local registry with the stand-in
base). The builds use the stand-in base (EDGE_L4T_BASE, default the local registry's) and share the
host's build cache, so the times are those of a warm cache.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

NAME = "direct_deploy"
MIB = 1024 * 1024
REGISTRY = os.environ.get("EDGE_REGISTRY", "localhost:5000")


def _bundle_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _one(work: Path, robot: Any, model: Path, label: str) -> dict[str, Any]:
    import torch

    from edge_deploy import JetsonDeployment
    from edge_deploy.fleet.direct import deploy_direct

    image, state = torch.rand(1, 3, 224, 224), torch.rand(1, 48)
    dep = JetsonDeployment(model, jetson_ip="127.0.0.1", workdir=work)
    dep.export_onnx({"image": image, "robot_state": state}, work / f"{model.stem}.onnx")
    conv = dep.convert_tensorrt(work / f"{model.stem}.onnx", precision="fp16")
    t0 = time.monotonic()
    result = deploy_direct(
        conv.bundle.path, robot, precision="fp16", work=work / ".edge", health_timeout_s=900
    )
    seconds = time.monotonic() - t0
    r = result.results[0]
    return {
        "deploy": label,
        "outcome": r.outcome,
        "image_mib": round((r.image_bytes or 0) / MIB, 3),
        "bundle_mib": round(_bundle_bytes(conv.bundle.path) / MIB, 3),
        "total_s": round(seconds, 1),
        "pull_s": r.timings.get("pull"),
        "engine_s": r.timings.get("engine"),
        "version": result.version,
    }


def run(args: Any = None) -> dict[str, Any]:
    import torch

    from edge_deploy.fleet.direct import target_robot
    from edge_deploy.model.sample import write_sample_policy
    from edge_deploy.simulation import simulate as sim

    os.environ.setdefault("EDGE_L4T_BASE", f"{REGISTRY}/edge-deploy/l4t-standin:r36.4")
    os.environ.setdefault("EDGE_CONVERTER_BASE", os.environ["EDGE_L4T_BASE"])
    os.environ.setdefault("EDGE_RUNTIME_PYTHON", "3.11")
    from edge_deploy.images.files import stage_context

    with tempfile.TemporaryDirectory(prefix="edge-bench-direct-") as tmp:
        work = Path(tmp)
        # Both builds from one snapshot of the tool's files: the model is the only change between them.
        os.environ["EDGE_DEPLOY_SOURCE"] = str(stage_context(work / "source"))
        write_sample_policy(work / "policy.pt", None)
        model = torch.jit.load(str(work / "policy.pt"))
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01)
        model.save(str(work / "retrained.pt"))
        with sim.simulated(1, "bdirect", registry=REGISTRY, ssh_port_base=2391, service_port_base=18391) as s:
            r = s.robots[0]
            robot = target_robot(
                "127.0.0.1",
                name=r.name,
                user=r.user,
                port=r.ssh_port,
                ssh_key=Path(s.state_dir) / "id_ed25519",
                known_hosts=Path(s.state_dir) / "known_hosts",
                service_port=r.service_port,
                gpu=False,
                health_start_interval_s=5.0,
                min_free_mb=512,
            )
            rows = [
                _one(work, robot, work / "policy.pt", "first (robot has nothing)"),
                _one(work, robot, work / "retrained.pt", "model-only change"),
            ]
    return {
        "rows": rows,
        "model_change_over_bundle_mib": round(rows[1]["image_mib"] - rows[1]["bundle_mib"], 3),
        "note": "one simulated robot, arm64 under QEMU on a shared 2-core x86 host; stand-in L4T base",
    }
