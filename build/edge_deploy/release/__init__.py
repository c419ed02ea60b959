"""Releases: versioned, digest-pinned, signed images and their manifest."""
