"""Site caches (fleet/site.py, ``edge-deploy site``): input checks, the config the tool writes, the access-log
count of served blobs, and a real ``docker-registry`` in proxy mode in front of a real upstream registry
(loopback only): after a blob's first pull through the cache, later pulls never reach the upstream."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from edge_deploy.fleet import FleetError
from edge_deploy.fleet import site as sites
from edge_deploy.simulation.processes import alive, free_port
from tests.build.cli_helpers import run_cli
from tests.support import need_tool


@pytest.mark.parametrize(
    "listen", ["127.0.0.1", "127.0.0.1:0", "127.0.0.1:99999", ":5000", "a b:5000", "x;rm:1"]
)
def test_a_listen_address_that_is_not_host_port_is_refused(listen: str) -> None:
    with pytest.raises(FleetError, match="listen address"):
        sites.check_listen(listen)


def test_a_listen_address_off_loopback_needs_allow_public() -> None:
    with pytest.raises(FleetError, match="not on loopback") as exc:
        sites.check_listen("10.0.0.5:5050")
    assert exc.value.options == ("allow_public",)
    assert sites.check_listen("10.0.0.5:5050", allow_public=True) == "10.0.0.5:5050"
    assert sites.check_listen("localhost:5050") == "localhost:5050"
    assert sites.check_listen("[::1]:5050") == "[::1]:5050"


@pytest.mark.parametrize("name", ["", "-x", "a/b", "../up", "a b", "x" * 64])
def test_a_site_name_that_could_escape_its_directory_is_refused(name: str) -> None:
    with pytest.raises(FleetError, match="site name"):
        sites.check_name(name)


@pytest.mark.parametrize(
    "upstream", ["ftp://r", "registry:5000", "http://r/?x=1", "http://r:99999", "file:///x"]
)
def test_an_upstream_that_is_not_an_http_url_is_refused_before_anything_starts(
    upstream: str, tmp_path: Path
) -> None:
    with pytest.raises(FleetError, match="upstream registry URL"):
        sites.site_up("s", upstream, listen="127.0.0.1:5999", state_root=tmp_path)
    assert not (tmp_path / "s").exists()


def test_the_config_is_a_proxy_with_its_access_log_and_metrics_on_loopback(tmp_path: Path) -> None:
    site = sites.Site("s", str(tmp_path), "127.0.0.1:5050", "http://127.0.0.1:5000", debug_port=15055)
    config = yaml.safe_load(sites.write_config(site).read_text())
    assert config["proxy"] == {"remoteurl": "http://127.0.0.1:5000"}
    assert config["http"]["addr"] == "127.0.0.1:5050"
    assert config["http"]["debug"]["addr"] == "127.0.0.1:15055"
    assert config["log"]["accesslog"] == {"disabled": False}
    assert config["storage"]["filesystem"]["rootdirectory"] == str(tmp_path / "storage")
    plain = sites.Site("u", str(tmp_path), "127.0.0.1:5051", None, debug_port=15056)
    assert "proxy" not in yaml.safe_load(sites.write_config(plain).read_text())


DIGEST = "sha256:" + "ab" * 32
OTHER = "sha256:" + "cd" * 32
ACCESS_LOG = f"""time="2026-11-30T06:51:24Z" level=info msg="response completed" http.response.status=200
127.0.0.1 - - [30/Nov/2026:06:51:24 +0000] "HEAD /v2/t/x/blobs/{DIGEST} HTTP/1.1" 200 0 "" "Go-http-client/1.1"
127.0.0.1 - - [30/Nov/2026:06:51:24 +0000] "GET /v2/ HTTP/1.1" 200 2 "" "Go-http-client/1.1"
127.0.0.1 - - [30/Nov/2026:06:51:24 +0000] "GET /v2/t/x/blobs/{DIGEST} HTTP/1.1" 200 300000 "" "Go-http-client/1.1"
127.0.0.1 - - [30/Nov/2026:06:51:25 +0000] "GET /v2/edge/runtime/blobs/{OTHER} HTTP/1.1" 200 77 "" "containerd/1.7"
127.0.0.1 - - [30/Nov/2026:06:51:25 +0000] "GET /v2/t/x/blobs/{DIGEST} HTTP/1.1" 404 157 "" "Go-http-client/1.1"
127.0.0.1 - - [30/Nov/2026:06:51:26 +0000] "GET /v2/t/x/blobs/{DIGEST} HTTP/1.1" 200 300000 "" "Go-http-client/1.1"
"""


def test_served_blobs_counts_full_downloads_per_digest_from_an_offset(tmp_path: Path) -> None:
    log = tmp_path / "registry.log"
    log.write_text(ACCESS_LOG)
    served = sites.served_blobs(log)
    assert served[DIGEST] == sites.Served(gets=2, bytes=600000)  # HEAD and the 404 carry no layer
    assert served[OTHER] == sites.Served(gets=1, bytes=77)
    offset = ACCESS_LOG.index("127.0.0.1 - - [30/Nov/2026:06:51:25")
    assert sites.served_blobs(log, offset)[DIGEST] == sites.Served(gets=1, bytes=300000)
    assert sites.served_blobs(tmp_path / "absent.log") == {}


def _push_blob(listen: str, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    start = httpx.post(f"http://{listen}/v2/edge-deploy/site-test/blobs/uploads/", timeout=10)
    assert start.status_code == 202, start.text
    location = start.headers["location"]
    if location.startswith("/"):
        location = f"http://{listen}{location}"
    put = httpx.put(f"{location}{'&' if '?' in location else '?'}digest={digest}", content=data, timeout=30)
    assert put.status_code == 201, put.text
    return digest


@pytest.fixture
def upstream_and_cache(tmp_path: Path) -> Iterator[tuple[sites.Site, sites.Site]]:
    need_tool("docker-registry")
    taken: set[int] = set()
    up_port, cache_port = free_port(16100, taken), free_port(16100, taken)
    up = sites.site_up("upstream", None, listen=f"127.0.0.1:{up_port}", state_root=tmp_path)
    try:
        cache = sites.site_up(
            "cache", f"http://127.0.0.1:{up_port}", listen=f"127.0.0.1:{cache_port}", state_root=tmp_path
        )
        try:
            yield up, cache
        finally:
            sites.site_down(cache, purge=True)
    finally:
        sites.site_down(up, purge=True)


@pytest.mark.slow
def test_a_blob_pulled_three_times_through_the_cache_leaves_the_upstream_for_the_first_pull_only(
    upstream_and_cache: tuple[sites.Site, sites.Site],
) -> None:
    up, cache = upstream_and_cache
    data = os.urandom(256 * 1024)
    digest = _push_blob(up.listen, data)
    offset = sites.log_offset(up)
    url = f"http://{cache.listen}/v2/edge-deploy/site-test/blobs/{digest}"
    first = httpx.get(url, timeout=30, follow_redirects=True)
    assert first.status_code == 200 and first.content == data
    deadline = time.monotonic() + 20
    while sites.cached_bytes(cache) < len(data) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.3)  # the access log line is written after the response
    # distribution 2.8 (registry/proxy/proxyblobstore.go) answers a miss with two upstream reads, one
    # stored and one streamed to the client: a cold layer costs a site two copies, whatever its size.
    cold = sites.served_blobs(up.log, offset)
    assert list(cold) == [digest] and 1 <= cold[digest].gets <= 2
    assert cold[digest].bytes == cold[digest].gets * len(data)
    offset = sites.log_offset(up)
    for _ in range(2):
        again = httpx.get(url, timeout=30, follow_redirects=True)
        assert again.status_code == 200 and again.content == data
    time.sleep(0.3)
    assert sites.served_blobs(up.log, offset) == {}  # stored: later pulls never reach the upstream
    status = sites.site_status(cache)
    assert status["running"] and status["answering"] and status["cached_bytes"] >= len(data)
    assert status["proxy"]["blobs"]["Requests"] >= 3


@pytest.mark.slow
def test_a_cache_is_read_only_and_stops_by_its_pid(upstream_and_cache: tuple[sites.Site, sites.Site]) -> None:
    _, cache = upstream_and_cache
    push = httpx.post(f"http://{cache.listen}/v2/edge-deploy/site-test/blobs/uploads/", timeout=10)
    assert push.status_code >= 400  # robots and anyone else on the site's LAN can only pull
    pid = cache.pid
    assert alive(pid, str(cache.config))
    sites.site_down(cache)
    assert not alive(pid, str(cache.config))
    assert sites.Site.load("cache", Path(cache.state_dir).parent).pid is None


@pytest.mark.slow
def test_the_site_cli_starts_reports_and_stops_a_cache(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    need_tool("docker-registry")
    port = free_port(16200, set())
    root = str(tmp_path)
    code, out, err = run_cli(
        capsys, "site", "up", "depot", "--upstream", "http://127.0.0.1:5000", "--listen", f"127.0.0.1:{port}",
        "--state-root", root, "--json",
    )  # fmt: skip
    try:
        assert code == 0, err
        assert json.loads(out)["answering"] is True
        code, out, _ = run_cli(capsys, "site", "status", "--state-root", root, "--json")
        assert code == 0
        (row,) = json.loads(out)
        assert row["name"] == "depot" and row["listen"] == f"127.0.0.1:{port}" and row["running"]
        code, _, err = run_cli(
            capsys, "site", "up", "other", "--upstream", "http://127.0.0.1:5000", "--listen", f"127.0.0.1:{port}",
            "--state-root", root,
        )  # fmt: skip
        assert code != 0 and "already answers" in err and "Traceback" not in err
    finally:
        code, out, _ = run_cli(capsys, "site", "down", "depot", "--purge", "--state-root", root)
    assert code == 0 and "stopped site cache depot" in out
    assert not (tmp_path / "depot").exists()
    code, _, err = run_cli(capsys, "site", "down", "depot", "--state-root", root)
    assert code != 0 and "No site named 'depot'" in err
