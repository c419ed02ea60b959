"""The model pipeline: load → export → sanitize → validate → fp16/int8 → model bundle (see docs/model-pipeline.md)."""

from __future__ import annotations

from edge_deploy.model.convert import ConvertOptions, ConvertResult, Step, convert

__all__ = ["ConvertOptions", "ConvertResult", "Step", "convert"]
