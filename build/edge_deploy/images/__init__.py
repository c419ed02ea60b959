"""The converter and runtime images: wheelhouses, ``docker buildx bake``, digests and sizes."""

from __future__ import annotations

from edge_deploy.images.build import ImageError, ImageResult, build_images

__all__ = ["ImageError", "ImageResult", "build_images"]
