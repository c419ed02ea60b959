"""A release of several models: the builder gets the model set, the manifest records each model (name,
bundle sha256, precision), manifests without ``models`` still read, and a malformed ``models`` is refused in
one sentence."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from edge_deploy.images import BuildResult
from edge_deploy.images.models import ModelSet, ModelSpec
from edge_deploy.release.manifest import ReleaseError, ReleaseManifest, ReleaseModel, load_release
from edge_deploy.release.release import ReleaseOptions
from tests.build.test_release_logic import FakeBuilder, FakeRegistry, make, reg, repo  # noqa: F401

SHA_D, SHA_P = "d" * 64, "e" * 64


class ModelsBuilder(FakeBuilder):
    """FakeBuilder that reports the models of the set it was given, as build_images does."""

    def __call__(self, **kw: Any) -> BuildResult:
        kw = {**kw, "model": ",".join(m.name for m in kw["models"].models)}
        result = super().__call__(**kw)
        result.models = [
            {"name": "detector", "bundle_sha256": SHA_D, "precision": "fp32"},
            {"name": "policy", "bundle_sha256": SHA_P, "precision": "fp16"},
        ]
        return result


def test_release_of_two_models_records_each(repo: Path, reg: FakeRegistry) -> None:  # noqa: F811
    (repo / "model" / "det.onnx").write_bytes(b"d")
    models = ModelSet(
        (
            ModelSpec("policy", repo / "model" / "policy.pt"),
            ModelSpec("detector", repo / "model" / "det.onnx", "fp32"),
        )
    )
    builder = ModelsBuilder(reg)
    rel = make(repo, reg, builder)
    with pytest.raises(ReleaseError, match=r"one model or several models each with a name, not both"):
        rel.create(ReleaseOptions(version="0.1.0", model_dir=repo / "model", models=models, force=True))
    m = rel.create(ReleaseOptions(version="0.1.0", models=models, force=True))
    call = builder.calls[-1]
    assert call["models"] is models and call["model_dir"] is None
    saved = load_release("0.1.0", repo / "releases")
    assert (
        saved.models
        == m.models
        == [
            ReleaseModel("detector", SHA_D, "fp32"),
            ReleaseModel("policy", SHA_P, "fp16"),
        ]
    )
    assert "models" not in saved.extra


def _doc(**changes: Any) -> dict[str, Any]:
    d = ReleaseManifest.for_runtime_image("1.0.0", "r.example:5000/e/runtime@sha256:" + "a" * 64).to_dict()
    d.update(changes)
    return d


def test_manifests_without_models_still_read() -> None:
    d = _doc()
    del d["models"]
    assert ReleaseManifest.from_dict(json.loads(json.dumps(d))).models == []


@pytest.mark.parametrize(
    ("models", "problem"),
    [
        ({"detector": {}}, "expected a list of models"),
        ([{"name": "detector", "bundle_sha256": SHA_D}], "expected a list of models, each with name"),
        (
            [{"name": "Detector", "bundle_sha256": SHA_D, "precision": "fp32"}],
            "expected model names as the runtime",
        ),
        ([{"name": "a", "bundle_sha256": SHA_D, "precision": "fp32"}] * 2, "expected each model name once"),
        ([{"name": "a", "bundle_sha256": 1, "precision": "fp32"}], "expected a list of models"),
    ],
)
def test_malformed_models_are_refused_in_one_sentence(models: Any, problem: str) -> None:
    with pytest.raises(ReleaseError, match=rf"^Release manifest has an invalid 'models': {problem}"):
        ReleaseManifest.from_dict(_doc(models=models))
