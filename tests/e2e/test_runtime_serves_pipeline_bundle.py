"""Issue 4's "done when": `edge-runtime serve` on a bundle from the model pipeline answers the same actions
as ONNX Runtime run directly, and a second start is a cache hit. No Docker needed."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tests.runtime.test_serve_cli import ENV, serving
from tests.support import need

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_serve_pipeline_bundle(tmp_path: Path, precision: str) -> None:
    need(importlib.util.find_spec("torch") is not None, "torch (the host extra) to build a pipeline bundle")
    edge_deploy = [sys.executable, "-m", "edge_deploy"]
    env = {**ENV, "PYTHONPATH": os.pathsep.join([str(REPO / "build"), ENV["PYTHONPATH"]])}
    subprocess.run(
        [
            *edge_deploy,
            "sample-model",
            "-o",
            str(tmp_path / "policy.pt"),
            "--calibration-out",
            str(tmp_path / "calib.npz"),
            "--samples",
            "16",
        ],
        check=True,
        env=env,
        capture_output=True,
        timeout=300,
    )
    bundle = tmp_path / "bundle"
    subprocess.run(
        [
            *edge_deploy,
            "convert",
            str(tmp_path / "policy.pt"),
            "-o",
            str(bundle),
            "--precision",
            precision,
            "--calibration",
            str(tmp_path / "calib.npz"),
        ],
        check=True,
        env=env,
        capture_output=True,
        timeout=600,
    )
    import onnxruntime as ort

    spec = json.loads((bundle / "bundle.json").read_text())
    rng = np.random.default_rng(5)
    feeds = {
        t["name"]: rng.standard_normal([2 if isinstance(d, str) else d for d in t["shape"]]).astype(
            t["dtype"]
        )
        for t in spec["inputs"]
    }
    expected = ort.InferenceSession(str(bundle / "model.onnx")).run(["action"], feeds)[0]
    hits = []
    for _ in range(2):
        with serving(bundle, tmp_path / "cache") as (url, _proc):
            with urllib.request.urlopen(url + "/readyz") as r:
                hits.append(json.loads(r.read())["startup"]["cache_hit"])
            buf = io.BytesIO()
            np.savez(buf, **feeds)  # type: ignore[arg-type]
            req = urllib.request.Request(
                url + "/v1/infer",
                data=buf.getvalue(),
                headers={"Content-Type": "application/x-npz", "Accept": "application/x-npz"},
            )
            with urllib.request.urlopen(req) as r, np.load(io.BytesIO(r.read())) as out:
                np.testing.assert_allclose(out["action"], expected, rtol=1e-5, atol=1e-5)
    assert hits == [False, True]
