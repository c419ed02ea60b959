"""The model repository's pure parts: discovery, the pipelines file, request slots and the memory budget."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.bundle import BatchProfile, ModelBundle
from edge_runtime.errors import BundleError, EdgeError
from edge_runtime.repository import (
    SLOT_OVERHEAD_BYTES,
    Footprint,
    MemoryBudget,
    check_budget,
    discover,
    footprint,
    is_repository,
    load_pipelines,
    memory_budget,
    parse_slots,
)
from tests.runtime.bundles import write_detector_bundle, write_linear_bundle

MIB = 1 << 20
PIPELINE = {
    "version": 1,
    "pipelines": [
        {
            "name": "perceive-act",
            "steps": [{"model": "detector"}, {"model": "policy", "inputs": {"image": "detector.features"}}],
            "outputs": ["policy.action", "detector.score"],
        }
    ],
}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModelBundle]:
    root = tmp_path_factory.mktemp("repo")
    rng = np.random.default_rng(0)
    write_detector_bundle(root / "detector", image_hw=16)
    write_linear_bundle(
        root / "policy", rng.standard_normal((51, 7)), rng.standard_normal(7), image_hw=16, name="policy"
    )
    return {n: ModelBundle.load(root / n) for n in ("detector", "policy")}


def test_discover_lists_bundle_dirs_in_order_and_refuses_odd_entries(
    bundles: dict[str, ModelBundle], tmp_path: Path
) -> None:
    repo = bundles["policy"].path.parent
    assert list(discover(repo)) == ["detector", "policy"] and is_repository(repo)
    assert not is_repository(tmp_path) and not is_repository(tmp_path / "absent")
    (tmp_path / "Bad Name").mkdir()
    with pytest.raises(BundleError, match="is not valid"):
        discover(tmp_path)
    (tmp_path / "Bad Name").rmdir()
    (tmp_path / "notabundle").mkdir()
    with pytest.raises(BundleError, match="notabundle in the model repository is not a model bundle"):
        discover(tmp_path)


def test_pipeline_resolves_inputs_outputs_and_batch(bundles: dict[str, ModelBundle]) -> None:
    (p,) = load_pipelines(PIPELINE, bundles)
    assert p.models == ["detector", "policy"]
    # image feeds the detector; robot_state goes straight to the policy; the policy's image is the detector's.
    assert [s.name for s in p.inputs] == ["image", "robot_state"]
    assert [s.name for s in p.outputs] == ["action", "score"]
    assert p.batch == BatchProfile(1, 1, 8)
    calls: list[tuple[str, list[str]]] = []

    def call(model: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        calls.append((model, sorted(feeds)))
        if model == "detector":
            return {"features": feeds["image"] + 1, "score": np.zeros((1, 3), np.float32)}
        return {"action": feeds["image"][:, :1, 0, 0] + feeds["robot_state"][:, :1]}

    image = np.zeros((1, 3, 16, 16), np.float32)
    out = p.run({"image": image, "robot_state": np.full((1, 48), 2, np.float32)}, call)
    assert calls == [("detector", ["image"]), ("policy", ["image", "robot_state"])]
    assert out["action"].tolist() == [[3.0]] and sorted(out) == ["action", "score"]


def test_pipeline_structure_checks_without_models(tmp_path: Path) -> None:
    assert load_pipelines(json.dumps(PIPELINE))[0].name == "perceive-act"
    path = tmp_path / "pipelines.json"
    path.write_text(json.dumps(PIPELINE))
    assert load_pipelines(path)[0].output_refs == ("policy.action", "detector.score")


@pytest.mark.parametrize(
    ("doc", "sentence"),
    [
        ({"version": 2, "pipelines": []}, "reads version 1"),
        ({"pipelines": [{"name": "p", "steps": []}]}, "non-empty list of steps"),
        ({"pipelines": [{"name": "P!", "steps": [{"model": "policy"}]}]}, "pipeline name 'P!' is not valid"),
        (
            {"pipelines": [{"name": "p\n", "steps": [{"model": "policy"}]}]},
            r"pipeline name 'p\\n' is not valid",
        ),
        ({"pipelines": [{"name": "p", "steps": [{"model": "policy"}], "extra": 1}]}, "unknown key 'extra'"),
        (
            {
                "pipelines": [
                    {"name": "p", "steps": [{"model": "policy", "inputs": {"image": "detector.features"}}]}
                ]
            },
            'not "<earlier model>.<output>"',
        ),
        (
            {"pipelines": [{"name": "p", "steps": [{"model": "policy"}, {"model": "policy"}]}]},
            "runs model 'policy' twice",
        ),
        (
            {
                "pipelines": [
                    {"name": "p", "steps": [{"model": "policy"}]},
                    {"name": "p", "steps": [{"model": "policy"}]},
                ]
            },
            "declares pipeline 'p' twice",
        ),
        ({"pipelines": [{"name": "p", "steps": [{"model": "policy"}], "outputs": ["x.y"]}]}, "outputs 'x.y'"),
    ],
)
def test_pipeline_structure_refusals(doc: dict, sentence: str) -> None:
    with pytest.raises(BundleError, match=sentence):
        load_pipelines(doc)


@pytest.mark.parametrize(
    ("steps", "outputs", "sentence"),
    [
        ([{"model": "missing"}], [], "uses model 'missing', which the repository does not hold"),
        (
            [{"model": "detector"}, {"model": "policy", "inputs": {"image": "detector.nope"}}],
            [],
            "reads output 'nope'",
        ),
        (
            [{"model": "detector"}, {"model": "policy", "inputs": {"pixels": "detector.features"}}],
            [],
            "feeds input 'pixels'",
        ),
        (
            [{"model": "detector"}, {"model": "policy", "inputs": {"image": "detector.score"}}],
            [],
            r"output 'detector.score' \(float32 \['batch', 3\]\) does not fit input 'image'",
        ),
        ([{"model": "detector"}], ["detector.features", "detector.features"], "two tensors named 'features'"),
    ],
)
def test_pipeline_checks_against_models(
    bundles: dict[str, ModelBundle], steps: list, outputs: list, sentence: str
) -> None:
    with pytest.raises(BundleError, match=sentence):
        load_pipelines({"pipelines": [{"name": "p", "steps": steps, "outputs": outputs}]}, bundles)


def test_pipeline_named_like_a_model_is_refused(bundles: dict[str, ModelBundle]) -> None:
    with pytest.raises(BundleError, match="has the name of a model"):
        load_pipelines({"pipelines": [{"name": "policy", "steps": [{"model": "detector"}]}]}, bundles)


def test_parse_slots() -> None:
    names = ["detector", "policy"]
    assert parse_slots(None, names) == {"detector": 1, "policy": 1}
    assert parse_slots("3", names) == {"detector": 3, "policy": 3}
    assert parse_slots("policy=2", names) == {"detector": 1, "policy": 2}
    for bad, sentence in (("x=2", "model 'x'"), ("policy=two", "not N or name=N"), ("0", "outside 1..64")):
        with pytest.raises(EdgeError, match=sentence):
            parse_slots(bad, names)


def test_footprint_counts_engine_and_working_memory_per_slot(bundles: dict[str, ModelBundle]) -> None:
    policy = bundles["policy"]
    one, two = footprint("policy", policy, 1), footprint("policy", policy, 2)
    assert one.engine_bytes == policy.model_path.stat().st_size
    io = 8 * (3 * 16 * 16 + 48 + 7) * 4  # inputs and outputs at the largest batch (8), float32
    assert one.working_bytes == io * 6 + SLOT_OVERHEAD_BYTES
    assert two.working_bytes == 2 * one.working_bytes
    assert footprint("policy", policy, 1, engine_bytes=123).engine_bytes == 123


def test_budget_refusal_names_every_model_and_number() -> None:
    prints = [Footprint("detector", 600 * MIB, 100 * MIB, 2), Footprint("policy", 300 * MIB, 50 * MIB, 1)]
    assert check_budget(prints, MemoryBudget(2048 * MIB, "test")) == 1050 * MIB
    assert check_budget(prints, None) == 1050 * MIB
    with pytest.raises(EdgeError) as err:
        check_budget(
            prints,
            MemoryBudget(1024 * MIB, "EDGE_MEMORY_BUDGET_MB=1024"),
            ("TensorRT build workspace", 1 << 30),
        )
    sentence = str(err.value)
    assert "\n" not in sentence and sentence.count(". ") == 0
    for part in (
        "detector 600 MiB engine + 100 MiB working (2 slots)",
        "policy 300 MiB engine + 50 MiB working (1 slot)",
        "plus 1.00 GiB TensorRT build workspace",
        "need 2.03 GiB (estimated)",
        "budget of 1.00 GiB",
        "EDGE_MEMORY_BUDGET_MB=1024",
    ):
        assert part in sentence


def test_memory_budget_sources(tmp_path: Path) -> None:
    assert memory_budget(None, 512).bytes == 512 * MIB  # type: ignore[union-attr]
    nano = memory_budget("NVIDIA Jetson Orin Nano Developer Kit")
    assert (
        nano is not None and nano.bytes == 7 << 30 and "Orin Nano" in nano.source and "shared" in nano.source
    )
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:        4194304 kB\nMemFree: 1 kB\n")
    host = memory_budget(None, None, meminfo)
    assert host is not None and host.bytes == 3 << 30
    assert memory_budget(None, None, tmp_path / "absent") is None
