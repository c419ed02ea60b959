"""The route table as a client meets it: each path answers its own methods, and near misses of the infer
routes are 404s (a redirect would make a client re-send a large body), while the other routes keep
Starlette's trailing-slash redirect."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

MODEL = "tiny-policy"  # the tiny bundle's model name (tests/runtime/conftest.py)
INFER_PATHS = ("/v1/infer", f"/v2/models/{MODEL}/infer", f"/v2/models/{MODEL}/versions/1/infer")
GET_PATHS = (
    "/healthz",
    "/readyz",
    "/metrics",
    "/v2",
    "/v2/health/live",
    "/v2/health/ready",
    f"/v2/models/{MODEL}",
    f"/v2/models/{MODEL}/ready",
    f"/v2/models/{MODEL}/versions/1",
    f"/v2/models/{MODEL}/versions/1/ready",
)


@pytest.mark.parametrize("path", INFER_PATHS)
def test_infer_routes_take_post_only(client: TestClient, path: str) -> None:
    for method in ("GET", "HEAD", "PUT", "DELETE"):
        r = client.request(method, path)
        assert (r.status_code, r.headers["allow"]) == (405, "POST"), (method, path)


@pytest.mark.parametrize("path", INFER_PATHS)
def test_infer_near_misses_are_404_not_redirects(client: TestClient, path: str) -> None:
    for near in (path + "/", path + "x", path + "/more"):
        r = client.post(near, content=b"{}", follow_redirects=False)
        assert r.status_code == 404 and r.text == "Not Found", near


@pytest.mark.parametrize("path", GET_PATHS)
def test_status_routes_answer_get_and_head_and_refuse_post(client: TestClient, path: str) -> None:
    assert client.get(path).status_code == 200, path
    assert client.head(path).status_code == 200, path
    r = client.post(path, content=b"{}")
    assert r.status_code == 405 and set(r.headers["allow"].split(", ")) == {"GET", "HEAD"}, path


def test_status_routes_keep_the_trailing_slash_redirect(client: TestClient) -> None:
    r = client.get("/healthz/", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"].endswith("/healthz")


def test_unknown_paths_are_404(client: TestClient) -> None:
    for path in ("/", "/v1", "/v2/models", "/v3/infer"):
        assert client.get(path).status_code == 404, path
        assert client.post(path, content=b"{}").status_code == 404, path
