"""``python -m bench``: a bare run leaves out the opt-in benchmarks (large_model), naming one runs it."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import bench.__main__ as bench_main
import pytest


def _ran(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, argv: list[str]) -> list[str]:
    ran: list[str] = []

    def fake_module(path: str) -> Any:
        name = path.rsplit(".", 1)[1]
        return types.SimpleNamespace(run=lambda args: ran.append(name) or {"rows": []})

    monkeypatch.setattr(bench_main.importlib, "import_module", fake_module)
    assert bench_main.main([*argv, "--out", str(tmp_path)]) == 0
    return ran


def test_bare_run_leaves_out_large_model(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ran = _ran(monkeypatch, tmp_path, [])
    assert "large_model" not in ran
    assert ran == [n for n in bench_main.BENCHMARKS if n not in bench_main.OPT_IN]


def test_large_model_runs_when_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert _ran(monkeypatch, tmp_path, ["large_model"]) == ["large_model"]
