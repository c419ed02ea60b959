"""``edge-runtime serve`` as a real process: cold then warm start, correct answers, SIGTERM drain."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from bench._serve import ServiceProcess, free_port

from tests.runtime.conftest import FIXTURES, sample_feeds

REPO = Path(__file__).resolve().parents[2]
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join([str(REPO / "runtime"), str(REPO)]),
    "PYTHONUNBUFFERED": "1",
}


def get(url: str, timeout: float = 2.0) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def post_json(url: str, feeds: dict[str, np.ndarray], timeout: float = 30.0) -> tuple[int, dict]:
    data = json.dumps({"inputs": {k: v.tolist() for k, v in feeds.items()}}).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@contextmanager
def serving(
    bundle: Path, cache: Path, *extra: str, script: list[str] | None = None, env: dict[str, str] | None = None
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """``edge-runtime serve`` on ONNX Runtime, ready; its log (stdout + stderr) is on ``proc.stdout``."""
    with ServiceProcess(
        bundle, cache, "onnxruntime", list(extra), script=script, env=env or ENV, merge_output=True
    ) as svc:
        svc.wait_ready(timeout_s=60)
        yield svc.url, svc.proc


def test_cold_then_warm_start_and_correct_actions(tiny_bundle: Path, tmp_path: Path) -> None:
    import onnxruntime as ort

    feeds = sample_feeds(2, seed=11)
    expected = ort.InferenceSession(str(tiny_bundle / "model.onnx")).run(["action"], feeds)[0]
    starts = []
    for _ in range(2):
        with serving(tiny_bundle, tmp_path / "cache") as (url, _proc):
            status, ready = get(url + "/readyz")
            starts.append(ready["startup"])
            status, body = post_json(url + "/v1/infer", feeds)
            assert status == 200
            np.testing.assert_allclose(np.array(body["outputs"]["action"]), expected, atol=1e-5)
            healthcheck = subprocess.run(
                [sys.executable, "-m", "edge_runtime", "healthcheck", "--url", url],
                env=ENV,
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert healthcheck.returncode == 0
            # What Docker runs: the module, with the port from the environment, importing no click.
            port = url.rsplit(":", 1)[1]
            probe = (
                "import runpy, sys; sys.argv = ['healthcheck']\n"
                "try:\n    runpy.run_module('edge_runtime.healthcheck', run_name='__main__')\n"
                "except SystemExit as e:\n    code = e.code\n"
                "print('click' in sys.modules, code)"
            )
            module = subprocess.run(
                [sys.executable, "-c", probe],
                env={**ENV, "EDGE_PORT": port},
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert module.stdout.split()[-2:] == ["False", "0"], module.stdout + module.stderr
            assert f"127.0.0.1:{port}/readyz: HTTP 200" in module.stdout
            live = subprocess.run(
                [sys.executable, "-m", "edge_runtime.healthcheck", "--live"],
                env={**ENV, "EDGE_PORT": port},
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert live.returncode == 0 and "/healthz: HTTP 200" in live.stdout
    assert [s["cache_hit"] for s in starts] == [False, True]
    assert starts[1]["build_seconds"] == 0.0 and starts[0]["build_seconds"] > 0


def test_sigterm_drains_inflight_request(tiny_bundle: Path, tmp_path: Path) -> None:
    env = {**ENV, "EDGE_TEST_SLOW_S": "1.5"}
    script = [str(FIXTURES / "procs" / "slow_serve.py")]
    with serving(tiny_bundle, tmp_path / "cache", "--drain-s", "10", script=script, env=env) as (url, proc):
        feeds = sample_feeds()
        feeds["robot_state"][0, 0] = 42.0  # the fixture makes this request slow
        result: dict[str, object] = {}
        t = threading.Thread(target=lambda: result.update(r=post_json(url + "/v1/infer", feeds)))
        t.start()
        time.sleep(0.5)  # request is in flight
        proc.send_signal(signal.SIGTERM)
        t.join(timeout=20)
        out, _ = proc.communicate(timeout=20)
        status, body = result["r"]  # type: ignore[misc]
        assert status == 200 and len(body["outputs"]["action"][0]) == 7
        # uvicorn re-raises the captured SIGTERM after draining, so the exit status says "terminated".
        assert proc.returncode in (0, -signal.SIGTERM), out
        assert "Traceback" not in out


def test_missing_bundle_and_unwritable_cache_fail_at_start(tiny_bundle: Path, tmp_path: Path) -> None:
    def run(bundle: Path, cache: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "edge_runtime",
                "serve",
                "--bundle",
                str(bundle),
                "--cache",
                str(cache),
                "--port",
                str(free_port()),
            ],
            env=ENV,
            capture_output=True,
            text=True,
            timeout=60,
        )

    r = run(tmp_path / "nope", tmp_path / "cache")
    assert r.returncode != 0 and "error: Model bundle" in r.stderr and "Traceback" not in r.stderr
    blocker = tmp_path / "file"
    blocker.write_text("")
    r = run(tiny_bundle, blocker / "cache")
    assert r.returncode != 0 and "not writable" in r.stderr and "Traceback" not in r.stderr


def test_healthcheck_fails_when_nothing_listens() -> None:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "edge_runtime",
            "healthcheck",
            "--url",
            f"http://127.0.0.1:{free_port()}",
            "--timeout",
            "1",
        ],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 1 and "unreachable" in r.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "edge_runtime.healthcheck", "--bogus"], env=ENV, capture_output=True, text=True
    )
    assert (
        bad.returncode == 2 and bad.stderr.strip() == "healthcheck: unknown argument '--bogus' (only --live)."
    )


def test_serve_and_engine_build_read_the_same_env_and_share_the_cache_entry(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    """EDGE_* variables configure both commands (one set of option definitions): an engine built ahead of
    time with `engine build` is the entry `serve` loads, at the precision both were told."""
    env = {
        **ENV,
        "EDGE_BUNDLE": str(tiny_bundle),
        "EDGE_CACHE": str(tmp_path / "c"),
        "EDGE_BACKEND": "onnxruntime",
        "EDGE_PRECISION": "fp16",
    }

    def engine(*args: str) -> Any:
        r = subprocess.run(
            [sys.executable, "-m", "edge_runtime", "engine", *args, "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout[r.stdout.index("{") if args[0] == "build" else 0 :])

    entry = engine("build")
    assert entry["hit"] is False
    with ServiceProcess(None, None, None, env=env) as svc:  # bundle, cache, backend, precision from env
        svc.wait_ready(timeout_s=60)
        assert svc.startup["backend"] == "onnxruntime"
        assert svc.startup["cache_hit"] is True and svc.startup["key"] == entry["key"]
    assert [e["parts"]["precision"] for e in engine("list")] == ["fp16"]


def test_ros2_bridge_started_after_ready_and_stopped_on_sigterm(tiny_bundle: Path, tmp_path: Path) -> None:
    log = tmp_path / "ros2.log"
    env = {**ENV, "EDGE_TEST_ROS2_LOG": str(log)}
    script = [str(FIXTURES / "procs" / "fake_ros2_serve.py")]
    with serving(tiny_bundle, tmp_path / "cache", "--ros2", script=script, env=env) as (_url, proc):
        deadline = time.monotonic() + 30
        while "start" not in log.read_text() if log.exists() else True:
            assert time.monotonic() < deadline, "bridge never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["event"] for e in events] == ["init", "start", "stop"]
    assert events[0]["inputs"] == ["image", "robot_state"] and events[0]["registry"] == "CollectorRegistry"
    assert events[1]["outputs"] == {"action": [1, 7]}


def test_ros2_without_the_module_is_a_clear_error(tiny_bundle: Path, tmp_path: Path) -> None:
    code = "import sys; sys.modules['edge_runtime.ros2'] = None; from edge_runtime.cli import main; main()"
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "serve",
            "--bundle",
            str(tiny_bundle),
            "--cache",
            str(tmp_path / "c"),
            "--ros2",
            "--port",
            str(free_port()),
        ],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (
        r.returncode != 0
        and "error: --ros2 needs edge_runtime.ros2" in r.stderr
        and "Traceback" not in r.stderr
    )


def test_serve_pins_itself_to_cpus(tiny_bundle: Path, tmp_path: Path) -> None:
    with serving(tiny_bundle, tmp_path / "cache", "--cpus", "0") as (_url, proc):
        status = Path(f"/proc/{proc.pid}/status").read_text()
        allowed = next(line for line in status.splitlines() if line.startswith("Cpus_allowed_list"))
        assert allowed.split(":")[1].strip() == "0"


def _tensorrt_refusal() -> str:
    """TensorRT's own sentence for why it cannot serve here (our machines have no TensorRT, or no GPU)."""
    import pytest

    from edge_runtime.backends.tensorrt import TensorRTBackend
    from edge_runtime.errors import BackendUnavailable

    try:
        TensorRTBackend().require()
    except BackendUnavailable as exc:
        return " ".join(str(exc).split())
    pytest.skip("TensorRT is usable on this machine, so --backend tensorrt is not refused here")


def test_backend_tensorrt_without_tensorrt_exits_with_one_sentence_before_listening(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    """Asked for TensorRT where it cannot run (for real: no TensorRT here), serve prints TensorRT's sentence
    as one error line and exits 2 (EdgeError's code) before it listens or touches the engine cache."""
    why = _tensorrt_refusal()
    port = free_port()
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "edge_runtime",
            "serve",
            "--bundle",
            str(tiny_bundle),
            "--cache",
            str(tmp_path / "cache"),
            "--backend",
            "tensorrt",
            "--port",
            str(port),
        ],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {why}"], r.stderr
    assert "tensorrt" in why.lower() and "Traceback" not in r.stderr
    assert "listening on" not in r.stderr and not (tmp_path / "cache").exists()


def test_auto_fallback_is_logged_and_shown_by_the_running_service(tiny_bundle: Path, tmp_path: Path) -> None:
    """The real process under ``--backend auto`` without TensorRT: a WARNING line at start names the
    fallback and TensorRT's sentence; /readyz carries the same sentence."""
    why = _tensorrt_refusal()
    with ServiceProcess(tiny_bundle, tmp_path / "cache", "auto", env=ENV, merge_output=True) as svc:
        svc.wait_ready(timeout_s=60)
        status, ready = get(svc.url + "/readyz")
    assert status == 200
    assert (ready["backend"], ready["backend_requested"], ready["fallback"]) == ("onnxruntime", "auto", why)
    assert svc.proc.stdout is not None
    log = svc.proc.stdout.read()
    warning = [line for line in log.splitlines() if " WARNING " in line]
    assert len(warning) == 1 and warning[0].endswith(
        f"backend auto fell back to onnxruntime on the CPU, TensorRT is not used: {why}"
    ), log
