"""The bring-your-own-model corpus: ONNX models this project did not write convert at fp32, fp16 and int8.

Each model is validated by ``convert`` itself: fp32 against ONNX Runtime on the original file, fp16/int8
against fp32, with the default tolerances scaled by the model's output magnitude (logits are not of
order 1). ``EDGE_CORPUS_TABLE=path`` writes the results table (docs/model-pipeline.md quotes it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.build.onnx_corpus import CORPUS, PRECISIONS, CorpusModel, markdown, run_model

_ROWS: dict[str, dict[str, Any]] = {}


@pytest.fixture(scope="module", autouse=True)
def _table() -> Any:
    yield
    target = os.environ.get("EDGE_CORPUS_TABLE")
    if target and _ROWS:
        rows = [_ROWS[m.name] for m in CORPUS if m.name in _ROWS]
        Path(target).write_text(markdown(rows))
        Path(target).with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")


def test_corpus_covers_what_users_bring() -> None:
    assert len(CORPUS) >= 20
    kinds = {m.kind for m in CORPUS}
    assert {"CNN", "MLP", "RNN/LSTM", "transformer"} <= kinds


@pytest.mark.parametrize("model", CORPUS, ids=[m.name for m in CORPUS])
def test_corpus_model_converts_at_every_precision(model: CorpusModel, tmp_path: Path) -> None:
    row = run_model(model, tmp_path)
    _ROWS[model.name] = row
    for precision in PRECISIONS:
        r = row[precision]
        assert r["fp32_vs_original"] <= 1e-3 * row["output_scale"]
        if precision != "fp32":
            assert r["delta"] is not None and r["delta"] <= r["tolerance"]


def test_corpus_spans_ir_and_opset_versions(tmp_path: Path) -> None:
    import onnx

    seen = []
    for i, m in enumerate(CORPUS):
        (tmp_path / str(i)).mkdir()
        proto = onnx.load(str(m.make(tmp_path / str(i))), load_external_data=False)
        opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
        seen.append((int(proto.ir_version), int(opset)))
    assert set(range(3, 10)) <= {ir for ir, _ in seen}
    assert min(op for _, op in seen) <= 7 and max(op for _, op in seen) >= 21
