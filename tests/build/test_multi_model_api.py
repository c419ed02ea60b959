"""``JetsonDeployment`` with several models: each converted with its own precision into a model repository
the runtime reads (one bundle per name), the single-model form unchanged, and wrong names refused in one
sentence."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_deploy.api import JetsonDeployment
from edge_runtime.bundle import ModelBundle
from edge_runtime.errors import EdgeError
from tests.build.multi_models import DETECTIONS, write_detector


def test_several_models_convert_into_a_repository(tmp_path: Path, sample_files: tuple[Path, Path]) -> None:
    from edge_runtime.repository import discover, load_pipelines

    policy, _ = sample_files
    det = write_detector(tmp_path / "detector.onnx")
    dep = JetsonDeployment({"detector": det, "policy": policy}, workdir=tmp_path)
    conv = dep.convert_models(precision={"detector": "fp32", "policy": "fp16"}, max_batch_size=4)
    repo = tmp_path / "models"
    assert sorted(p.name for p in repo.iterdir()) == ["detector", "policy"]  # nothing else in the repository
    assert set(discover(repo)) == {"detector", "policy"}
    bundles = {name: ModelBundle.load(repo / name) for name in ("detector", "policy")}
    assert {n: b.manifest.precision for n, b in bundles.items()} == {"detector": "fp32", "policy": "fp16"}
    assert conv["policy"].bundle.path == repo / "policy"
    assert [s.name for s in bundles["detector"].outputs] == ["detections"]
    # the detections fit the policy's robot_state: the pipeline the e2e release declares reads here
    act = load_pipelines(
        {
            "version": 1,
            "pipelines": [
                {
                    "name": "act",
                    "steps": [
                        {"model": "detector"},
                        {"model": "policy", "inputs": {"robot_state": "detector.detections"}},
                    ],
                }
            ],
        },
        bundles,
    )
    assert [s.name for s in act[0].outputs] == ["action"] and DETECTIONS == 48


def test_several_models_refusals(tmp_path: Path, sample_files: tuple[Path, Path]) -> None:
    policy, _ = sample_files
    with pytest.raises(EdgeError, match=r"Model name 'Policy' is not allowed"):
        JetsonDeployment({"Policy": policy})
    dep = JetsonDeployment({"policy": policy}, workdir=tmp_path, jetson_ip="127.0.0.1")
    with pytest.raises(EdgeError, match=r"Model 'detector' is not one of this deployment's: policy\."):
        dep.convert_models(precision={"detector": "fp32"})
    with pytest.raises(EdgeError, match=r"deployed as a release of them"):
        dep.deploy()
    with pytest.raises(EdgeError, match=r"convert_models is for several models"):
        JetsonDeployment(policy).convert_models()
