"""The Open Inference Protocol (KServe v2) endpoints: Triton's own HTTP client against the served process,
and the decode/encode paths (binary tensor extension, JSON data, bad requests) through Starlette's TestClient.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from edge_runtime import oip
from edge_runtime.bundle import TensorSpec
from edge_runtime.service import InferenceService, ServiceConfig, create_app
from tests.runtime.conftest import sample_feeds
from tests.runtime.test_serve_cli import serving
from tests.runtime.test_service import _reference
from tests.support import need

MODEL = "tiny-policy"  # the tiny bundle's model name (tests/runtime/conftest.py)
INFER = f"/v2/models/{MODEL}/infer"


def _post(client: TestClient, body: bytes, header_length: int | None, path: str = INFER) -> object:
    headers = {} if header_length is None else {"Inference-Header-Content-Length": str(header_length)}
    return client.post(path, content=body, headers=headers)


def _split(content: bytes, header_length: str | None) -> tuple[dict, bytes]:
    n = len(content) if header_length is None else int(header_length)
    return json.loads(content[:n]), content[n:]


# -- the real client against the real process ---------------------------------------------------------------
def test_tritonclient_against_served_process(tiny_bundle: Path, tmp_path: Path) -> None:
    need(importlib.util.find_spec("tritonclient") is not None, "tritonclient[http] (the dev extra)")
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    feeds = sample_feeds(2, seed=5)
    expected = _reference(tiny_bundle, feeds)
    with serving(tiny_bundle, tmp_path / "cache") as (url, _proc):
        c = httpclient.InferenceServerClient(url=url.removeprefix("http://"), network_timeout=30)
        try:
            assert c.is_server_live() and c.is_server_ready()
            assert c.is_model_ready(MODEL) and not c.is_model_ready("other-model")
            server = c.get_server_metadata()
            assert server["name"] == "edge-runtime" and "binary_tensor_data" in server["extensions"]
            meta = c.get_model_metadata(MODEL)
            assert meta["name"] == MODEL and meta["platform"] == "onnxruntime" and meta["versions"] == ["1"]
            assert {i["name"]: (i["datatype"], i["shape"]) for i in meta["inputs"]} == {
                "image": ("FP32", [-1, 3, 224, 224]),
                "robot_state": ("FP32", [-1, 48]),
            }
            assert meta["outputs"] == [{"name": "action", "datatype": "FP32", "shape": [-1, 7]}]

            for binary_in in (True, False):
                for binary_out in (True, False, None):
                    inputs = []
                    for name, arr in feeds.items():
                        t = httpclient.InferInput(name, list(arr.shape), "FP32")
                        t.set_data_from_numpy(arr, binary_data=binary_in)
                        inputs.append(t)
                    outputs = (
                        None
                        if binary_out is None
                        else [httpclient.InferRequestedOutput("action", binary_data=binary_out)]
                    )
                    result = c.infer(MODEL, inputs, outputs=outputs, request_id="req-7")
                    np.testing.assert_allclose(result.as_numpy("action"), expected, atol=1e-5)
                    response = result.get_response()
                    assert response["id"] == "req-7" and response["model_name"] == MODEL
                    assert ("parameters" in response["outputs"][0]) == (binary_out is not False)

            bad = httpclient.InferInput("image", [1, 3, 224, 224], "FP32")
            bad.set_data_from_numpy(feeds["image"][:1])
            with pytest.raises(InferenceServerException) as err:
                c.infer(MODEL, [bad])  # robot_state is missing
            assert err.value.status() == "400" and "Missing input 'robot_state'" in err.value.message()
            with pytest.raises(InferenceServerException) as err:
                c.get_model_metadata("other-model")
            assert err.value.status() == "404" and "is not served here" in err.value.message()
        finally:
            c.close()


# -- protocol details through the ASGI app -------------------------------------------------------------------
def test_binary_request_binary_response(client: TestClient, tiny_bundle: Path) -> None:
    feeds = sample_feeds(3, seed=2)
    body, length = oip.encode_request(feeds)
    r = _post(client, body, length)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    header, raw = _split(r.content, r.headers.get("inference-header-content-length"))
    assert header["model_name"] == MODEL and header["model_version"] == "1" and "id" not in header
    (out,) = header["outputs"]
    assert out["name"] == "action" and out["datatype"] == "FP32" and out["shape"] == [3, 7]
    assert out["parameters"]["binary_data_size"] == len(raw) == 3 * 7 * 4
    np.testing.assert_allclose(
        np.frombuffer(raw, "<f4").reshape(3, 7), _reference(tiny_bundle, feeds), atol=1e-5
    )


def test_json_request_nested_data_json_response(client: TestClient, tiny_bundle: Path) -> None:
    feeds = sample_feeds(1, seed=4)
    doc = {
        "id": "abc",
        "inputs": [
            {"name": k, "shape": list(v.shape), "datatype": "FP32", "data": v.tolist()}  # nested lists
            for k, v in feeds.items()
        ],
        "outputs": [{"name": "action"}],
    }
    doc["inputs"][1]["data"] = np.rint(feeds["robot_state"]).astype(int).ravel().tolist()  # flat ints: cast
    r = client.post(INFER, json=doc)
    assert r.status_code == 200, r.text
    assert (
        r.headers["content-type"] == "application/json" and "inference-header-content-length" not in r.headers
    )
    body = r.json()
    assert body["id"] == "abc"
    expected = _reference(tiny_bundle, {**feeds, "robot_state": np.rint(feeds["robot_state"])})
    np.testing.assert_allclose(np.array(body["outputs"][0]["data"]).reshape(1, 7), expected, atol=1e-5)


def test_mixed_inputs_and_per_output_binary_flag(client: TestClient, tiny_bundle: Path) -> None:
    feeds = sample_feeds(1, seed=8)
    image = feeds["image"].tobytes()
    doc = {
        "inputs": [
            {
                "name": "image",
                "shape": [1, 3, 224, 224],
                "datatype": "FP32",
                "parameters": {"binary_data_size": len(image)},
            },
            {
                "name": "robot_state",
                "shape": [1, 48],
                "datatype": "FP32",
                "data": feeds["robot_state"].ravel().tolist(),
            },
        ],
        "parameters": {"binary_data_output": True},
        "outputs": [{"name": "action", "parameters": {"binary_data": False}}],  # the output's own flag wins
    }
    header = json.dumps(doc).encode()
    r = _post(client, header + image, len(header))
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    np.testing.assert_allclose(
        np.array(r.json()["outputs"][0]["data"]).reshape(1, 7), _reference(tiny_bundle, feeds), atol=1e-5
    )


def _binary_doc(**changes: object) -> tuple[bytes, int]:
    body, length = oip.encode_request(sample_feeds())
    assert length is not None
    doc = json.loads(body[:length])
    raw = body[length:]
    for key, value in changes.items():
        if key == "raw":
            raw = value  # type: ignore[assignment]
        else:
            doc = value(doc)  # type: ignore[operator]
    header = json.dumps(doc).encode()
    return header + raw, len(header)


def _set(path: list[object], value: object) -> Callable[[dict], dict]:
    def apply(doc: dict) -> dict:
        node = doc
        for p in path[:-1]:
            node = node[p]  # type: ignore[index]
        node[path[-1]] = value  # type: ignore[index]
        return doc

    return apply


BAD = {
    "wrong size vs shape": (_binary_doc(doc=_set(["inputs", 1, "shape"], [1, 47])), "needs 188 bytes"),
    "datatype mismatch": (
        _binary_doc(doc=_set(["inputs", 1, "datatype"], "FP64")),
        "datatype FP64, expected FP32",
    ),
    "unknown datatype": (_binary_doc(doc=_set(["inputs", 1, "datatype"], "FLOAT")), "this service takes"),
    "trailing bytes": (
        _binary_doc(raw=sample_feeds()["image"].tobytes() + sample_feeds()["robot_state"].tobytes() + b"xx"),
        "declare",
    ),
    "short body": (_binary_doc(raw=sample_feeds()["image"].tobytes()), "ends before the binary data"),
    "unknown input": (_binary_doc(doc=_set(["inputs", 1, "name"], "depth")), "Unknown input 'depth'"),
    "unknown output": (_binary_doc(doc=_set(["outputs"], [{"name": "speed"}])), "Unknown output 'speed'"),
    "no inputs list": (_binary_doc(doc=lambda d: {"inputs": {}}), '"inputs" list'),
    "shape not ints": (_binary_doc(doc=_set(["inputs", 0, "shape"], [1, "3"])), "non-negative integers"),
    "no data": (_binary_doc(doc=_set(["inputs", 0, "parameters"], {})), "neither data nor"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_binary_requests_are_400_with_a_sentence(client: TestClient, case: str) -> None:
    (body, length), fragment = BAD[case]
    r = _post(client, body, length)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert fragment in error and error.endswith(".") and "Traceback" not in error


@pytest.mark.parametrize(
    ("body", "length", "fragment"),
    [
        (b'{"inputs": [', None, "not valid JSON"),
        (b'{"inputs": []}', 99, "Inference-Header-Content-Length"),
        (b'{"inputs": []}', None, "Missing input"),
        (
            json.dumps(
                {
                    "inputs": [
                        {"name": "robot_state", "shape": [1, 48], "datatype": "FP32", "data": [[1, 2], [3]]}
                    ]
                }
            ).encode(),
            None,
            "rectangular",
        ),
        (
            json.dumps(
                {
                    "inputs": [
                        {"name": "robot_state", "shape": [1, 48], "datatype": "FP32", "data": [1.0] * 47}
                    ]
                }
            ).encode(),
            None,
            "47 data elements",
        ),
    ],
)
def test_bad_json_requests_are_400(
    client: TestClient, body: bytes, length: int | None, fragment: str
) -> None:
    r = _post(client, body, length)
    assert r.status_code == 400 and fragment in r.json()["error"], r.text


def test_unknown_model_is_404_and_metrics_count_v2(client: TestClient) -> None:
    body, length = oip.encode_request(sample_feeds())
    r = _post(client, body, length, path="/v2/models/other/infer")
    assert r.status_code == 404 and "'other' is not served here" in r.json()["error"]
    assert client.get("/v2/models/other").status_code == 404
    assert client.get(f"/v2/models/{MODEL}/versions/2/ready").status_code == 404
    assert _post(client, body, length, path=f"/v2/models/{MODEL}/versions/1/infer").status_code == 200
    r = client.post(INFER, content=body, headers={"Content-Encoding": "gzip"})
    assert r.status_code == 415
    text = client.get("/metrics").text
    for line in ('edge_requests_total{code="404"}', 'edge_request_errors_total{reason="unknown_model"}'):
        assert line in text, line


def test_infer_routes_outside_starlette_keep_http_semantics(client: TestClient) -> None:
    """The infer routes are plain ASGI: wrong methods are 405, near-miss paths fall through to a 404, and a
    body sent in chunks (no Content-Length) is read whole."""
    for path in (INFER, f"/v2/models/{MODEL}/versions/1/infer", "/v1/infer"):
        r = client.get(path)
        assert r.status_code == 405 and r.headers["allow"] == "POST", path
    body, length = oip.encode_request(sample_feeds())
    for path in (f"{INFER}x", f"/v2/models/{MODEL}/infer/more", f"/v2/models/{MODEL}/versions/1/2/infer"):
        assert _post(client, body, length, path=path).status_code == 404, path

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(body), 7):
            yield body[i : i + 7]

    r = client.post(INFER, content=chunks(), headers={"Inference-Header-Content-Length": str(length)})
    assert r.status_code == 200
    header, raw = _split(r.content, r.headers["inference-header-content-length"])
    assert header["model_name"] == MODEL and len(raw) > 0


def test_not_ready_is_503_with_retry_after(tiny_bundle: Path, tmp_path: Path) -> None:
    service = InferenceService(ServiceConfig(bundle=tiny_bundle, cache=tmp_path, backend="onnxruntime"))
    service.prepare()  # bundle known, engine not loaded
    with TestClient(create_app(service, load_in_background=False)) as c:
        assert c.get("/v2/health/live").status_code == 200
        assert c.get("/v2/health/ready").status_code == 503
        assert c.get(f"/v2/models/{MODEL}/ready").status_code == 503
        body, length = oip.encode_request(sample_feeds())
        r = _post(c, body, length)
        assert r.status_code == 503 and r.headers["retry-after"] == "1" and "not loaded" in r.json()["error"]


def test_draining_is_503_through_the_shared_path(client: TestClient) -> None:
    service = client.service  # type: ignore[attr-defined]
    body, length = oip.encode_request(sample_feeds())
    service.draining = True
    try:
        r = _post(client, body, length)
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"] == "The service is shutting down."
        assert client.get("/v2/health/ready").status_code == 503
    finally:
        service.draining = False
    assert _post(client, body, length).status_code == 200
    assert 'edge_request_errors_total{reason="draining"}' in client.get("/metrics").text


@pytest.mark.parametrize("dtype", ["float32", "float16", "int64", "int32", "uint8", "bool"])
def test_encode_decode_roundtrip_every_bundle_dtype(dtype: str) -> None:
    arr = (np.arange(24).reshape(2, 3, 4) % 5).astype(dtype)
    spec = TensorSpec("x", dtype, ("batch", 3, 4))
    for binary in (True, False):
        body, length = oip.encode_request({"x": arr}, binary=binary, binary_output=binary)
        req = oip.decode_request(body, length, [spec], [spec])
        got = req.feeds["x"]
        assert got.dtype == np.dtype(dtype) and got.shape == (2, 3, 4)
        np.testing.assert_array_equal(got, arr)
        assert req.outputs == {"x": binary}
        content, hlen = oip.encode_response("m", req, {"x": got})
        header, raw = _split(content, None if hlen is None else str(hlen))
        out = header["outputs"][0]
        assert out["datatype"] == oip.datatype(dtype) and out["shape"] == [2, 3, 4]
        back = np.frombuffer(raw, dtype) if binary else np.array(out["data"], dtype=dtype)
        np.testing.assert_array_equal(back.reshape(arr.shape), arr)
    assert oip.tensor_metadata(spec) == {"name": "x", "datatype": oip.datatype(dtype), "shape": [-1, 3, 4]}


def test_unaligned_binary_input_is_copied_aligned() -> None:
    arr = np.arange(6, dtype=np.float32).reshape(1, 6)
    spec = TensorSpec("x", "float32", ("batch", 6))
    header = json.dumps(
        {
            "inputs": [
                {"name": "x", "shape": [1, 6], "datatype": "FP32", "parameters": {"binary_data_size": 24}}
            ]
        }
    ).encode()
    header += b" " * ((-len(header)) % 4 + 1)  # JSON allows trailing blanks; the tensor starts unaligned
    req = oip.decode_request(header + arr.tobytes(), len(header), [spec], [spec])
    assert req.feeds["x"].flags.aligned
    np.testing.assert_array_equal(req.feeds["x"], arr)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    header=st.one_of(
        st.binary(max_size=200),
        st.fixed_dictionaries(
            {
                "inputs": st.lists(
                    st.fixed_dictionaries(
                        {
                            "name": st.sampled_from(["image", "robot_state", "x"]),
                            "shape": st.lists(st.integers(-1, 50), max_size=3),
                            "datatype": st.sampled_from(["FP32", "FP16", "INT64", "BOOL", "BYTES"]),
                        },
                        optional={
                            "data": st.lists(st.floats(allow_nan=False) | st.booleans(), max_size=6),
                            "parameters": st.fixed_dictionaries({"binary_data_size": st.integers(-4, 64)}),
                        },
                    ),
                    max_size=3,
                )
            },
            optional={"outputs": st.lists(st.fixed_dictionaries({"name": st.sampled_from(["action", "y"])}))},
        ).map(lambda d: json.dumps(d).encode()),
    ),
    tail=st.binary(max_size=64),
    length=st.none() | st.integers(-2, 300),
)
def test_fuzzed_v2_requests_never_500(
    client: TestClient, header: bytes, tail: bytes, length: int | None
) -> None:
    hlen = None if length is None else str(length if length != 0 else len(header))
    headers = {} if hlen is None else {"Inference-Header-Content-Length": hlen}
    r = client.post(INFER, content=header + tail, headers=headers)
    assert 400 <= r.status_code < 500, r.text
    assert isinstance(r.json()["error"], str) and r.json()["error"].endswith(".")


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ("[" * 100_000 + "]" * 100_000, "nested"),
        ("[" * 2_000 + "1" + "]" * 2_000, ""),
        ("[NaN]", "NaN"),
        ("[Infinity]", "Infinity"),
        ("[1e39]", "finite"),
    ],
)
def test_nested_and_non_finite_json_data_is_a_protocol_error(data: str, fragment: str) -> None:
    spec = TensorSpec("x", "float32", ("batch",))
    body = f'{{"inputs": [{{"name": "x", "shape": [1], "datatype": "FP32", "data": {data}}}]}}'.encode()
    with pytest.raises(oip.ProtocolError) as err:
        oip.decode_request(body, None, [spec], [spec])
    assert err.value.status == 400 and fragment in str(err.value) and str(err.value).endswith(".")
