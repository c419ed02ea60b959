"""The converter and runtime images: the tool's files, wheelhouses, ``docker buildx bake``, digests and sizes.

One job per module: ``files`` (where the tool's files are; the staged build context), ``wheelhouse``
(offline wheels), ``bake`` (buildx bake), ``inspect`` (pushed images read back), ``result`` (typed
results), ``build`` (the orchestration of one build), ``models`` (several models, each its own layer).
"""

from __future__ import annotations

from edge_deploy.images.build import build_images
from edge_deploy.images.files import ToolFiles, tool_files, work_dir
from edge_deploy.images.models import ModelSet, ModelSpec, load_models_file, models_from_options
from edge_deploy.images.result import BuildResult, ImageError, ImageResult

__all__ = [
    "BuildResult",
    "ImageError",
    "ImageResult",
    "ModelSet",
    "ModelSpec",
    "ToolFiles",
    "build_images",
    "load_models_file",
    "models_from_options",
    "tool_files",
    "work_dir",
]
