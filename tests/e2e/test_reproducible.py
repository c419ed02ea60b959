"""One commit built twice with ``--no-cache`` gives one runtime image digest (SOURCE_DATE_EPOCH from the
commit time, BuildKit's rewrite-timestamp on the pushed image). On a difference the failure names the
layer that differs and the files in it that differ (content, time or mode), read from both layer tars.

The runtime is built for linux/amd64: the same Dockerfile, stages and wheel lock as arm64, without the
QEMU emulation that makes an arm64 build several times slower; emulation changes how fast RUN steps go,
not what they write, so what this shows about timestamps and ordering holds for arm64 too.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import time
import uuid
from pathlib import Path

import pytest

from tests.e2e.conftest import STANDIN, STANDIN_PYTHON

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(3000)]


def _blob(tar: tarfile.TarFile, digest: str) -> bytes:
    f = tar.extractfile(f"blobs/{digest.replace(':', '/')}")
    assert f is not None
    return f.read()


def _image(path: Path) -> tuple[str, dict[str, object]]:
    """An OCI layout tar's image digest (its index.json's manifest) and the amd64 image manifest."""
    with tarfile.open(path) as tar:
        f = tar.extractfile("index.json")
        assert f is not None
        digest = json.load(f)["manifests"][0]["digest"]
        doc = json.loads(_blob(tar, digest))
        for m in doc.get("manifests", []):
            if (m.get("platform") or {}).get("architecture") == "amd64":
                return digest, dict(json.loads(_blob(tar, m["digest"])))
    return digest, dict(doc)


def _members(blob: bytes) -> dict[str, tuple[str, int, int]]:
    """Each file of a layer tar: its content hash (a small JSON file's text), mtime and mode."""
    out = {}
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as tar:
        for m in tar.getmembers():
            f = tar.extractfile(m) if m.isfile() else None
            data = f.read() if f else b""
            small_json = m.name.endswith(".json") and len(data) < 4096
            content = (
                data.decode() if small_json else hashlib.sha256(data).hexdigest()[:12] if f else m.linkname
            )
            out[m.name] = (content, int(m.mtime), m.mode)
    return out


def _layer_diff(first: Path, second: Path) -> tuple[str, list[str]]:
    """Which layers of two OCI layout tars differ with the first few files that differ in each, and the
    names of all the files that differ."""
    (_, a), (_, b) = _image(first), _image(second)
    lines, names = [], []
    if a.get("config") != b.get("config"):
        lines.append(f"config differs: {a.get('config')} vs {b.get('config')}")
    layers_a, layers_b = a.get("layers", []), b.get("layers", [])
    assert isinstance(layers_a, list) and isinstance(layers_b, list)
    with tarfile.open(first) as ta, tarfile.open(second) as tb:
        for i, (la, lb) in enumerate(zip(layers_a, layers_b, strict=False)):
            if la["digest"] == lb["digest"]:
                continue
            ma, mb = _members(_blob(ta, la["digest"])), _members(_blob(tb, lb["digest"]))
            differ = [n for n in sorted(set(ma) | set(mb)) if ma.get(n) != mb.get(n)]
            names += differ
            files = [f"{n}: {ma.get(n)} vs {mb.get(n)}" for n in differ]
            lines.append(f"layer {i} differs in {len(files)} files: " + "; ".join(files[:8]))
    return "\n".join(lines) or "manifests differ outside config and layers", names


def test_one_commit_built_twice_without_cache_gives_one_runtime_digest(
    docker_host: str, sample_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runtime image is exported as an OCI layout with rewrite-timestamp (the engine's own builder
    cannot push with it, see docs/images.md; a docker-container builder, as in GitHub Actions, pushes
    what is exported here)."""
    from edge_deploy.images import build_images
    from edge_deploy.images.build import git_sha, source_date_epoch
    from edge_deploy.images.files import tool_files

    # one commit: the checkout's HEAD when the test starts (the tree may gain commits while it builds)
    checkout = tool_files().checkout
    assert checkout is not None, "the test builds the checkout's own files"
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(source_date_epoch(checkout)))
    revision = git_sha(checkout)
    version = f"repro-{uuid.uuid4().hex[:8]}"
    digests, seconds = [], []
    for i in range(2):
        out = tmp_path / f"runtime-{i}.tar"
        t0 = time.monotonic()
        build_images(
            model_dir=sample_model_dir,
            model="policy.pt",
            precision="fp16",
            version=version,
            registry=docker_host,
            l4t_base=STANDIN,
            converter_base=STANDIN,
            runtime_python=STANDIN_PYTHON,
            runtime_platforms="linux/amd64",
            progress="quiet",
            revision=revision,
            overrides=["*.no-cache=true", f"runtime.output=type=oci,dest={out},rewrite-timestamp=true"],
        )
        seconds.append(time.monotonic() - t0)
        digests.append(_image(out)[0])
    print(f"runtime digests {digests}, build seconds {[round(s) for s in seconds]}")
    if digests[0] == digests[1]:
        return
    report, _names = _layer_diff(tmp_path / "runtime-0.tar", tmp_path / "runtime-1.tar")
    pytest.fail(f"one commit built twice gave two runtime digests {digests}:\n{report}")
