"""Fuzzing both inference APIs of a real ``edge-runtime serve`` process on a loopback socket.

Hypothesis builds bad and borderline requests for ``POST /v1/infer`` (JSON and npz, including compressed
npz that inflates far beyond its body, and lying zip headers) and ``POST /v2/models/<name>/infer`` (JSON
and Triton binary tensors). After every request the service must still answer ``/healthz``, the answer to
bad input must be a 4xx sentence (never a 5xx), and the process's peak memory must stay near where it was.
Examples are bounded so the whole module runs in well under a minute.
"""

from __future__ import annotations

import collections
import io
import json
import math
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from bench._serve import ServiceProcess
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_runtime import oip
from edge_runtime.service import NPZ
from tests.runtime.test_serve_cli import ENV
from tests.runtime.test_service import Member, MiB, _peak_rss, npy_member, zip_archive

V2_INFER = "/v2/models/tiny-policy/infer"
FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@dataclass
class Served:
    svc: ServiceProcess
    http: httpx.Client
    base_rss: int
    log: collections.deque[str]  # the service's stderr, read as it comes (an unread pipe would block it)

    def tail(self) -> str:
        return "".join(list(self.log)[-40:])


@pytest.fixture(scope="module")
def served(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with ServiceProcess(
        tiny_bundle, tmp_path_factory.mktemp("fuzz") / "cache", "onnxruntime", env=ENV
    ) as svc:
        svc.wait_ready(timeout_s=60)
        log: collections.deque[str] = collections.deque(maxlen=400)
        assert svc.proc.stderr is not None
        threading.Thread(target=lambda: log.extend(iter(svc.proc.stderr.readline, "")), daemon=True).start()
        with httpx.Client(base_url=svc.url, timeout=60) as http:
            yield Served(svc, http, _peak_rss(svc.proc.pid), log)


def check(served: Served, r: httpx.Response) -> None:
    """No 5xx; a refusal is one sentence; the process is alive, healthy and did not balloon."""
    assert r.status_code < 500, f"HTTP {r.status_code}: {r.text[:300]}\nservice log:\n{served.tail()}"
    if r.status_code >= 400:
        error = r.json()["error"]
        assert isinstance(error, str) and error.endswith(".") and "Traceback" not in error, error
    assert served.svc.proc.poll() is None, "the service died"
    assert served.http.get("/healthz", timeout=5).status_code == 200
    grown = _peak_rss(served.svc.proc.pid) - served.base_rss
    assert grown < 256 * MiB, f"the service's peak memory grew by {grown / MiB:.0f} MiB"


# -- values --------------------------------------------------------------------------------------------------
specials = st.sampled_from(
    ["NaN", "Infinity", "-Infinity", "1e39", "-1e400", "1e-50", "0", "true", "null", '"x"']
)
numbers = st.floats(width=32) | st.integers(-(2**70), 2**70) | st.booleans()
json_values = st.recursive(
    st.none() | numbers | st.text(max_size=4),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=16,
)


def dumps(value: Any) -> str:
    return json.dumps(value, allow_nan=True)  # NaN / Infinity literals, as careless clients send them


@st.composite
def nested_text(draw: st.DrawFn) -> str:
    depth = draw(st.integers(1, 30_000))
    return "[" * depth + draw(specials) + "]" * depth


@st.composite
def tensor_text(draw: st.DrawFn, shape: tuple[int, ...]) -> str:
    """A JSON array of the given shape, zeros with a few special values spliced in."""
    flat = ["0"] * math.prod(shape)
    for _ in range(draw(st.integers(0, 3))):
        if flat:
            flat[draw(st.integers(0, len(flat) - 1))] = draw(specials | numbers.map(dumps))
    text = flat
    for dim in reversed(shape):
        text = ["[" + ",".join(text[i : i + dim]) + "]" for i in range(0, len(text), dim)] if dim else ["[]"]
    return text[0] if shape else flat[0]


shapes = st.sampled_from(
    [(1, 48), (2, 48), (1, 47), (0, 48), (9, 48), (48,), (), (1, 1, 48), (1, 3, 224, 224)]
)


# -- POST /v1/infer with JSON --------------------------------------------------------------------------------
@st.composite
def near_valid_shape(draw: st.DrawFn, name: str) -> tuple[int, ...]:
    """The model's shape for ``name`` at a batch in or just outside 1..8, or a wrong one now and then."""
    per = (3, 224, 224) if name == "image" else (48,)
    if draw(st.integers(0, 5)) == 0:
        return draw(shapes)
    return (draw(st.sampled_from([1, 1, 2, 0, 9])), *per)


@st.composite
def v1_json(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 5))
    if kind == 0:
        return draw(st.binary(max_size=200))
    if kind == 1:
        return dumps(draw(json_values)).encode()
    names = ["image", "robot_state", "x"] if kind >= 3 else ["x", "image", "robot_state"]
    names = [n for n in names if draw(st.integers(0, 6 if n != "x" else 1)) > 0]
    parts = []
    for name in names:
        if kind == 2:
            value = draw(nested_text())
        elif kind >= 3:
            shape = draw(near_valid_shape(name)) if name != "x" else (1,)
            if math.prod(shape) > 400_000:
                shape = (1, *shape[1:])
            value = draw(tensor_text(shape))
        else:
            value = dumps(draw(json_values))
        parts.append(f'"{name}": {value}')
    return ('{"inputs": {' + ", ".join(parts) + "}}").encode()


@FUZZ
@given(body=v1_json())
def test_v1_json_fuzz_against_the_served_process(served: Served, body: bytes) -> None:
    check(served, served.http.post("/v1/infer", content=body, headers={"Content-Type": "application/json"}))


# -- POST /v1/infer with npz ---------------------------------------------------------------------------------
METHODS = [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA]
BOMB_BATCHES = [300, 1000, 20_000]  # 181 MB, 602 MB, 12 GB of zeros behind 0.2-12 MB of deflate
DTYPES = ["<f4", "<f4", "<f4", "<f8", "<i8", "|b1", ">f4", "<f2", "|u1"]


@st.composite
def npz_member(draw: st.DrawFn, name: str) -> Member:
    """One member: mostly the model's input at a batch near its profile, sometimes a bomb (deflated, honest
    header, huge batch), a wrong shape or dtype, another compression method, or a zip size that lies."""
    shape = draw(near_valid_shape(name)) if name in ("image", "robot_state") else (1, 48)
    if draw(st.integers(0, 4)) == 0:
        shape = (draw(st.sampled_from(BOMB_BATCHES)), *shape[1:]) if shape else (10**9,)
    dtype = draw(st.sampled_from(DTYPES))
    small = math.prod(shape) * np.dtype(dtype).itemsize < 2 * MiB
    method = draw(st.sampled_from(METHODS)) if small else zipfile.ZIP_DEFLATED
    member = npy_member(name, shape, dtype, method)
    lie = draw(st.sampled_from([None, None, None, 0, 10, member.size // 2, member.size + 1, 2**32 - 1]))
    return (
        member
        if lie is None
        else Member(member.name, member.method, member.data, member.crc, member.size, lie)
    )


@st.composite
def v1_npz(draw: st.DrawFn) -> bytes:
    names = [n for n in ("image", "robot_state") if draw(st.integers(0, 7))]
    names += draw(st.lists(st.sampled_from(["x", "image", "robot_state.npy"]), max_size=1))
    kind = draw(st.integers(0, 3))
    if kind == 0:  # numpy's own writer, values that JSON cannot carry among them
        fill = draw(st.sampled_from([0.0, np.nan, np.inf, -1e30, 1e-45]))
        arrays = {
            n.removesuffix(".npy"): np.full(draw(near_valid_shape(n.removesuffix(".npy"))), fill, "<f4")
            for n in names
        }
        buf = io.BytesIO()
        (np.savez_compressed if draw(st.booleans()) else np.savez)(buf, **arrays)  # type: ignore[operator]
        body = buf.getvalue()
    else:
        body = zip_archive([draw(npz_member(n.removesuffix(".npy"))) for n in names])
    if kind == 3 and body:  # damage: cut it short or flip a byte
        at = draw(st.integers(0, len(body) - 1))
        body = body[:at] if draw(st.booleans()) else body[:at] + bytes([body[at] ^ 0xFF]) + body[at + 1 :]
    return body


@FUZZ
@given(body=v1_npz(), accept_npz=st.booleans())
def test_v1_npz_fuzz_with_bombs_against_the_served_process(
    served: Served, body: bytes, accept_npz: bool
) -> None:
    headers = {"Content-Type": NPZ, **({"Accept": NPZ} if accept_npz else {})}
    check(served, served.http.post("/v1/infer", content=body, headers=headers))


def test_a_64_mib_body_of_bombs_is_refused_cheaply(served: Served) -> None:
    """The brief's worst case: a body at the 64 MiB limit made of deflate bombs would inflate to ~64 GB."""
    members = [npy_member("image", (100_000, 3, 224, 224))]  # 60 GB declared, ~60 MB on the wire
    body = zip_archive([*members, npy_member("robot_state", (1, 48))])
    assert 32 * MiB < len(body) <= 64 * MiB
    check(served, served.http.post("/v1/infer", content=body, headers={"Content-Type": NPZ}))


# -- POST /v2/models/<name>/infer with JSON ------------------------------------------------------------------
@st.composite
def v2_json(draw: st.DrawFn) -> bytes:
    inputs = []
    for name in draw(st.lists(st.sampled_from(["image", "robot_state", "x"]), max_size=3)):
        shape = list(draw(shapes))
        item = (
            f'{{"name": "{name}", "shape": {json.dumps(shape)}, '
            f'"datatype": "{draw(st.sampled_from(["FP32", "FP64", "INT64", "BOOL", "BYTES"]))}"'
        )
        data = draw(st.sampled_from(["tensor", "nested", "value", "none"]))
        if data == "tensor":
            item += f', "data": {draw(tensor_text(tuple(shape)))}'
        elif data == "nested":
            item += f', "data": {draw(nested_text())}'
        elif data == "value":
            item += f', "data": {dumps(draw(json_values))}'
        inputs.append(item + "}")
    extra = draw(
        st.sampled_from(["", ', "outputs": [{"name": "action"}]', ', "id": 7', ', "parameters": []'])
    )
    return ('{"inputs": [' + ", ".join(inputs) + "]" + extra + "}").encode()


@FUZZ
@given(body=v2_json())
def test_v2_json_fuzz_against_the_served_process(served: Served, body: bytes) -> None:
    check(served, served.http.post(V2_INFER, content=body, headers={"Content-Type": "application/json"}))


# -- POST /v2/models/<name>/infer with Triton binary tensors -------------------------------------------------
@st.composite
def v2_binary(draw: st.DrawFn) -> tuple[bytes, str | None]:
    batch = draw(st.integers(0, 10))
    dtype = draw(st.sampled_from(["float32", "float32", "float16", "float64", "int64", "bool", "uint8"]))
    feeds = {"image": np.zeros((batch, 3, 224, 224), dtype), "robot_state": np.zeros((batch, 48), dtype)}
    if draw(st.booleans()):
        feeds["robot_state"] = np.full(
            (batch, 48), draw(st.sampled_from([np.nan, np.inf, 1e30, -0.0])), dtype
        )
    for name in draw(st.lists(st.sampled_from(list(feeds)), max_size=1)):
        del feeds[name]
    body, length = oip.encode_request(feeds, binary=draw(st.booleans()), binary_output=draw(st.booleans()))
    mutation = draw(st.sampled_from(["none", "cut", "append", "length", "size"]))
    header = str(length) if length is not None else None
    if mutation == "cut":
        body = body[: draw(st.integers(0, len(body)))]
    elif mutation == "append":
        body += draw(st.binary(min_size=1, max_size=64))
    elif mutation == "length":
        header = draw(st.sampled_from(["-1", "0", "1e3", "+12", str(len(body) + 1), str(2**64), "abc"]))
    elif mutation == "size" and length is not None and feeds:
        doc = json.loads(body[:length])
        doc["inputs"][0].setdefault("parameters", {})["binary_data_size"] = draw(
            st.sampled_from([0, 1, 2**31, 2**63, -4, 1.5, "8"])
        )
        new = json.dumps(doc).encode()
        body, header = new + body[length:], str(len(new))
    return body, header


@FUZZ
@given(request=v2_binary())
def test_v2_binary_fuzz_against_the_served_process(served: Served, request: tuple[bytes, str | None]) -> None:
    body, length = request
    headers = {} if length is None else {"Inference-Header-Content-Length": length}
    check(served, served.http.post(V2_INFER, content=body, headers=headers))


def test_the_served_process_still_infers_after_the_fuzz(served: Served) -> None:
    body = zip_archive([npy_member("image", (1, 3, 224, 224)), npy_member("robot_state", (1, 48))])
    r = served.http.post("/v1/infer", content=body, headers={"Content-Type": NPZ})
    assert r.status_code == 200 and len(r.json()["outputs"]["action"][0]) == 7, r.text
