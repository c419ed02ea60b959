"""The health gate, as a client of the robot's service (HTTP, Open Inference Protocol): ``/readyz`` must
say ready with the backend the robot should serve, and one inference per served model on an input made
from that model's own metadata must answer every declared output (a failure names the model); reached
through an SSH port forward."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any, TypedDict

from edge_deploy.fleet import FleetError
from edge_deploy.fleet.inventory import Robot
from edge_deploy.fleet.outcome import InferAnswer
from edge_deploy.fleet.ssh import RobotConnection


class GateFailed(FleetError):
    """The new release did not pass the health gate."""


class GateReport(TypedDict, total=False):
    """What a passed gate saw: /readyz's body, and with the smoke inference its round trip and the shape
    of each output."""

    readyz: dict[str, Any]
    smoke_s: float
    outputs: dict[str, Any]
    ros2: dict[str, Any]  # with ROS 2 on: the DDS probe's answer (round trip, action size, cyclonedds)
    models: dict[str, dict[str, Any]]  # every model's smoke round trip and output shapes (by name)


def smoke_inputs(metadata: dict[str, Any]) -> dict[str, Any]:
    """Batch-1 input arrays for whatever model the robot serves, made from that model's own metadata
    (``GET /v2/models/NAME``): dynamic dimensions are 1, floating-point inputs get deterministic values in
    [0, 1), integer and boolean inputs zeros."""
    import numpy as np

    from edge_runtime import oip

    rng = np.random.default_rng(0)
    feeds: dict[str, Any] = {}
    for spec in metadata.get("inputs") or []:
        shape = tuple(1 if d < 0 else int(d) for d in spec["shape"])
        try:
            dtype = oip.numpy_dtype(spec["datatype"])
        except KeyError:
            raise GateFailed(
                f"the model's input {spec['name']!r} has datatype {spec['datatype']}, which the smoke "
                "inference cannot fill"
            ) from None
        feeds[spec["name"]] = (
            rng.random(shape).round(3).astype(dtype) if dtype.kind == "f" else np.zeros(shape, dtype)
        )
    return feeds


def check_smoke_answer(metadata: dict[str, Any], answer: Any) -> dict[str, dict[str, Any]]:
    """The answer's outputs by name (``shape``, ``datatype``, ``data``); raises GateFailed unless every
    output the model declares came back with its declared shape (dynamic dimensions 1) and finite values."""
    import numpy as np

    got = {o.get("name"): o for o in (answer.get("outputs") or [])} if isinstance(answer, dict) else {}
    for spec in metadata.get("outputs") or []:
        out = got.get(spec["name"])
        if not isinstance(out, dict):
            raise GateFailed(f"smoke inference returned no output {spec['name']!r}")
        expected = [1 if d < 0 else int(d) for d in spec["shape"]]
        if list(out.get("shape") or []) != expected:
            raise GateFailed(
                f"smoke inference returned {spec['name']} of shape {out.get('shape')}, expected {expected}"
            )
        values = np.asarray(out.get("data") or [], dtype=np.float64)
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            raise GateFailed(f"smoke inference returned non-finite values in {spec['name']}")
    return got


async def smoke_check(http: Any, model: str) -> tuple[dict[str, dict[str, Any]], float]:
    """One inference through ``http`` (an httpx.AsyncClient on the service) with an input made from the
    served model's own metadata; its checked outputs and the round trip in seconds."""
    from edge_runtime import oip

    meta = await http.get(f"/v2/models/{model}")
    if meta.status_code != 200:
        raise GateFailed(f"model metadata answered {meta.status_code}: {meta.text[:150]}")
    metadata = meta.json()
    # Binary tensors in (no JSON for a camera frame), JSON out (small, and checked value by value).
    body, header_length = oip.encode_request(smoke_inputs(metadata), binary=True, binary_output=False)
    headers = {} if header_length is None else {oip.HEADER_LENGTH: str(header_length)}
    t0 = time.monotonic()
    resp = await http.post(f"/v2/models/{model}/infer", content=body, headers=headers)
    seconds = time.monotonic() - t0
    if resp.status_code != 200:
        raise GateFailed(f"smoke inference answered {resp.status_code}: {resp.text[:150]}")
    return check_smoke_answer(metadata, resp.json()), seconds


async def ready_check(http: Any) -> dict[str, Any]:
    """``GET /readyz`` must answer 200 with ``ready: true``; returns its body."""
    ready = await http.get("/readyz")
    try:
        body = ready.json()
    except ValueError:
        body = {"text": ready.text[:200]}
    if ready.status_code != 200 or not (isinstance(body, dict) and body.get("ready")):
        named = models_not_ready(body) if isinstance(body, dict) else ""
        if named:
            raise GateFailed(f"/readyz answered {ready.status_code}: {named}")
        raise GateFailed(f"/readyz answered {ready.status_code}: {str(body)[:150]}")
    return body


def expected_backend(robot: Robot, required: str | None) -> tuple[str | None, str]:
    """The backend ``robot`` must serve a release with (None: any will do) and why, from the release's
    ``required_backend`` and the robot's inventory: a robot that should run TensorRT must not pass its gate
    while serving ONNX Runtime on the CPU, unless that is allowed on purpose."""
    if required == "tensorrt":
        return "tensorrt", "the release requires TensorRT"
    if required == "any":
        return None, "the release accepts ONNX Runtime on the CPU"
    if robot.gpu and not robot.allow_cpu_fallback:
        return "tensorrt", "the robot has gpu: true in fleet.yaml"
    if robot.gpu:
        return None, "the robot has allow_cpu_fallback: true in fleet.yaml"
    return None, "the robot has gpu: false in fleet.yaml"


def backend_check(ready: dict[str, Any], expected: str | None, because: str) -> None:
    """Raise GateFailed unless the service reports ``expected`` as its backend; the reason names both
    backends and the service's own sentence for why it did not serve the expected one."""
    if expected is None:
        return
    served = ready.get("backend")
    if served == expected:
        return
    if not served:
        raise GateFailed(
            f"expected backend {expected} ({because}), but /readyz does not say which backend serves "
            "(an edge-runtime older than this tool)"
        )
    served, requested = str(served)[:40], str(ready.get("backend_requested") or "")[:40]  # the robot's text
    where = " on the CPU" if served == "onnxruntime" else ""
    if ready.get("fallback"):
        said = f"the service says: {str(ready['fallback'])[:300].rstrip('.')}"
    elif requested and requested != "auto":
        said = f"the service was started with --backend {requested} (EDGE_BACKEND)"
    else:
        said = "the service did not say why (an edge-runtime older than this tool)"
    allow = (
        "no inventory setting allows it (the release manifest has required_backend: tensorrt)"
        if because.startswith("the release")
        else "to allow it on purpose, set allow_cpu_fallback: true for the robot in fleet.yaml or release "
        "with required_backend any"
    )
    raise GateFailed(f"expected backend {expected} ({because}), served {served}{where}: {said}; {allow}")


def models_backend_check(ready: dict[str, Any], expected: str | None, because: str) -> None:
    """With several models, each one /readyz reports with a backend must be served by ``expected`` too; a
    failure names the model."""
    models = ready.get("models")
    if expected is None or not isinstance(models, dict):
        return
    for name, m in sorted(models.items()):
        served = m.get("backend") if isinstance(m, dict) else None
        if served and served != expected:
            raise GateFailed(
                f"model {str(name)[:64]!r}: expected backend {expected} ({because}), served {str(served)[:40]}"
            )


def served_model(ready: dict[str, Any]) -> str:
    """The model name a ready service reports (its path under /v2/models/)."""
    if not ready.get("model"):
        raise GateFailed("/readyz does not name the model it serves (an edge-runtime older than this tool)")
    return str(ready["model"])


def served_models(ready: dict[str, Any]) -> list[str]:
    """Every model a ready service serves: the names of /readyz's ``models`` (a release of several
    models), else the one model it names (a release of one, or an older edge-runtime)."""
    models = ready.get("models")
    if isinstance(models, dict) and models:
        return sorted(str(name) for name in models)
    return [served_model(ready)]


def models_not_ready(ready: dict[str, Any]) -> str:
    """The models /readyz reports as not ready, each with the service's reason ("" when none is)."""
    models = ready.get("models")
    if not isinstance(models, dict):
        return ""
    bad = [
        f"model {str(name)[:64]!r} is not ready"
        + (f" ({str(m.get('reason'))[:200].rstrip('.')})" if m.get("reason") else "")
        for name, m in sorted(models.items())
        if isinstance(m, dict) and not m.get("ready")
    ]
    return "; ".join(bad)


@contextlib.asynccontextmanager
async def service_client(
    conn: RobotConnection, timeout_s: float, port: int | None = None
) -> AsyncIterator[Any]:
    """An httpx client on the robot's service, through an SSH port forward (it listens on the robot's
    loopback); ``port``: another of the robot's ports (a hand-over gates the new release on its own)."""
    import httpx

    async with (
        conn.forward(conn.robot.service_port if port is None else port) as local,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{local}", timeout=timeout_s) as http,
    ):
        yield http


async def service_check(
    conn: RobotConnection,
    smoke: bool = True,
    timeout_s: float = 120,
    backend: tuple[str | None, str] | None = None,
    port: int | None = None,
) -> GateReport:
    """Through an SSH port forward: /readyz must say the engine is ready (and, with ``backend``, served by
    the expected backend: see ``backend_check``), and with ``smoke`` one inference on an input built from
    the model's own metadata must return every declared output with its declared shape and finite values
    (whatever the model: nothing here assumes the sample policy). ``port``: gate the release listening
    there (a hand-over's new release) instead of the service port."""
    async with service_client(conn, timeout_s, port) as http:
        ready = await ready_check(http)
        if backend is not None:
            backend_check(ready, *backend)
            models_backend_check(ready, *backend)
        result: GateReport = {"readyz": ready}
        if smoke:
            result["models"] = await smoke_models(http, served_models(ready))
            first = next(iter(result["models"].values()))  # one model's keys, as before several models
            result["smoke_s"], result["outputs"] = first["smoke_s"], first["outputs"]
        return result


async def smoke_models(http: Any, models: list[str]) -> dict[str, dict[str, Any]]:
    """The smoke inference on every model, one after another; a failure names the model. Each model's
    round trip and output shapes."""
    report: dict[str, dict[str, Any]] = {}
    for model in models:
        try:
            outputs, seconds = await smoke_check(http, model)
        except GateFailed as exc:
            if len(models) == 1:
                raise
            raise GateFailed(f"model {model!r}: {exc}") from None
        report[model] = {
            "smoke_s": round(seconds, 3),
            "outputs": {name: o.get("shape") for name, o in outputs.items()},
        }
    return report


async def ros2_check(
    conn: RobotConnection, timeout_s: float = 60, project: str | None = None
) -> dict[str, Any]:
    """One DDS round trip to the release's ROS 2 bridge: ``edge_runtime.ros2.probe`` run inside the running
    container (host networking, the container's ROS_DOMAIN_ID and CYCLONEDDS_URI: what a ROS 2 node on the
    robot sees), answered on the probe's own topics, never on the action topic. ``project``: a hand-over's
    new release (its compose project), whose bridge is in standby: only that bridge may answer."""
    import json

    from edge_deploy.fleet.compose import PROJECTS, SERVICE_FILTER

    if project is not None and project not in PROJECTS:
        raise GateFailed(f"unknown compose project {project[:40]!r}")
    which = (
        f"--filter label=com.docker.compose.project={project} {SERVICE_FILTER}" if project else SERVICE_FILTER
    )
    r = await conn.run(
        f"cid=$(docker ps -q {which} | head -n1); "
        '[ -n "$cid" ] || { echo "error: no running container" >&2; exit 1; }; '
        f'docker exec "$cid" python3 -m edge_runtime.ros2.probe --timeout {int(timeout_s)}'
        + (" --standby" if project else ""),
        timeout=timeout_s + 60,
    )
    if not r.ok:
        raise GateFailed(f"the ROS 2 bridge did not answer over DDS: {r.tail(300).strip() or 'no output'}")
    try:
        return dict(json.loads(r.stdout.strip().splitlines()[-1]))
    except (ValueError, IndexError):
        raise GateFailed(f"the ROS 2 probe answered {r.stdout[:150]!r}, not its JSON line") from None


async def infer(
    conn: RobotConnection, payload: dict[str, Any] | None = None, timeout_s: float = 120
) -> InferAnswer:
    """One inference on the robot's service, through an SSH port forward (it listens on the robot's
    loopback): ``payload`` as a ``POST /v1/infer`` body, or by default the smoke input made from each
    served model's metadata, model by model. Returns the outputs by name and the round-trip time (of the
    first model; with several models, every model's under ``models``)."""
    async with service_client(conn, timeout_s) as http:
        if payload is None:
            models: dict[str, Any] = {}
            for model in served_models(await ready_check(http)):  # every model of the release
                try:
                    outputs, seconds = await smoke_check(http, model)
                except GateFailed as exc:
                    raise GateFailed(f"model {model!r}: {exc}") from None
                models[model] = {"outputs": outputs, "round_trip_ms": round(seconds * 1000, 2)}
            first = next(iter(models.values()))
            answer: InferAnswer = {"outputs": first["outputs"], "service_ms": None}
            answer["round_trip_ms"] = first["round_trip_ms"]
            if len(models) > 1:
                answer["models"] = models
            return answer
        t0 = time.monotonic()
        resp = await http.post("/v1/infer", json=payload)
        round_trip_ms = (time.monotonic() - t0) * 1000
    if resp.status_code != 200:
        raise GateFailed(f"inference answered {resp.status_code}: {resp.text[:150]}")
    body = resp.json()
    return {
        "outputs": body.get("outputs", {}),
        "service_ms": body.get("latency_ms"),
        "round_trip_ms": round(round_trip_ms, 2),
    }
