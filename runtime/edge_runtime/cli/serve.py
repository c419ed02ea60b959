"""``edge-runtime serve``: probe → engine cache get-or-build → warm-up → HTTP service (and ROS 2 bridge)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edge_runtime.cli.options import backend_option, cache_option, model_source_options, precision_option
from edge_runtime.errors import BackendUnavailable, EdgeError, RequestError


@click.command()
@model_source_options(
    "Model bundle directory, served when --models holds no bundle [env EDGE_BUNDLE].",
    "Model repository: one bundle directory per model (+ pipelines.json), served when it holds any "
    "[env EDGE_MODELS].",
)
@click.option(
    "--slots",
    envvar="EDGE_SLOTS",
    default=None,
    help="Request slots: inferences each model runs at once, N or name=N,... (default 1) [env EDGE_SLOTS].",
)
@click.option(
    "--memory-budget-mb",
    type=click.FloatRange(min=0, min_open=True),
    envvar="EDGE_MEMORY_BUDGET_MB",
    default=None,
    help="Memory the models may use (default: the Jetson module's, else MemTotal, less 1 GiB) "
    "[env EDGE_MEMORY_BUDGET_MB].",
)
@cache_option
@backend_option
@precision_option
@click.option("--host", envvar="EDGE_HOST", default="127.0.0.1", show_default=True, help="[env EDGE_HOST]")
@click.option("--port", type=int, envvar="EDGE_PORT", default=8080, show_default=True, help="[env EDGE_PORT]")
@click.option(
    "--ros2", is_flag=True, envvar="EDGE_ROS2", help="Also serve over ROS 2 topics [env EDGE_ROS2]."
)
@click.option(
    "--ros2-model",
    envvar="EDGE_ROS2_MODEL",
    default=None,
    help="The model or pipeline the ROS 2 bridge feeds (default: the default model) [env EDGE_ROS2_MODEL].",
)
@click.option("--cpus", envvar="EDGE_CPUS", default=None, help="Pin to these CPUs, e.g. 2-5 [env EDGE_CPUS].")
@click.option("--max-body-mb", type=float, envvar="EDGE_MAX_BODY_MB", default=64.0, show_default=True)
@click.option(
    "--deadline-ms",
    type=float,
    envvar="EDGE_DEADLINE_MS",
    default=2000.0,
    show_default=True,
    help="Watchdog: an inference slower than this marks the service unhealthy (0: off).",
)
@click.option(
    "--hung-exit-s",
    type=click.FloatRange(min=0),
    envvar="EDGE_HUNG_EXIT_S",
    default=10.0,
    show_default=True,
    help="Watchdog: exit with status 75 once an inference is this far past its deadline, so the restart "
    "policy restarts the service (0: never) [env EDGE_HUNG_EXIT_S].",
)
@click.option("--warmup", type=int, envvar="EDGE_WARMUP", default=5, show_default=True)
@click.option(
    "--soft-temp",
    type=float,
    envvar="EDGE_SOFT_TEMP_C",
    default=80.0,
    show_default=True,
    help="°C above which the service degrades (smaller batches).",
)
@click.option(
    "--hard-temp",
    type=float,
    envvar="EDGE_HARD_TEMP_C",
    default=95.0,
    show_default=True,
    help="°C above which new work gets 503 until below the soft limit.",
)
@click.option(
    "--degraded-rate",
    type=float,
    envvar="EDGE_DEGRADED_RATE_HZ",
    default=None,
    help="Requests per second accepted while degraded (default: no cap).",
)
@click.option(
    "--degraded-power-mode",
    type=int,
    envvar="EDGE_DEGRADED_POWER_MODE",
    default=None,
    help="nvpmodel mode to ask for while degraded (needs nvpmodel).",
)
@click.option(
    "--device-root",
    type=click.Path(path_type=Path),
    envvar="EDGE_DEVICE_ROOT",
    default=Path("/"),
    hidden=True,
)
@click.option(
    "--drain-s",
    type=float,
    envvar="EDGE_DRAIN_S",
    default=30.0,
    show_default=True,
    help="On SIGTERM, wait this long for in-flight requests.",
)
@click.option(
    "--threads",
    type=click.IntRange(0),
    envvar="EDGE_THREADS",
    default=0,
    show_default=True,
    help="ONNX Runtime intra-op threads (0: one per core).",
)
@click.option(
    "--spin-wait/--no-spin-wait",
    envvar="EDGE_SPIN_WAIT",
    default=False,
    show_default=True,
    help="ONNX Runtime: idle threads spin for work (lower latency on dedicated cores; burns shared ones).",
)
@click.option(
    "--cuda-graph/--no-cuda-graph",
    envvar="EDGE_CUDA_GRAPH",
    default=False,
    show_default=True,
    help="TensorRT: capture each input shape's run in a CUDA graph and replay it [env EDGE_CUDA_GRAPH].",
)
@click.option(
    "--inline-infer",
    is_flag=True,
    envvar="EDGE_INLINE_INFER",
    help="Run inference on the HTTP event loop: lower latency, but health checks wait for it.",
)
def serve(
    bundle: Path | None,
    models: Path | None,
    slots: str | None,
    memory_budget_mb: float | None,
    cache: Path,
    backend: str,
    precision: str | None,
    host: str,
    port: int,
    ros2: bool,
    ros2_model: str | None,
    cpus: str | None,
    max_body_mb: float,
    deadline_ms: float,
    hung_exit_s: float,
    warmup: int,
    soft_temp: float,
    hard_temp: float,
    degraded_rate: float | None,
    degraded_power_mode: int | None,
    device_root: Path,
    drain_s: float,
    threads: int,
    spin_wait: bool,
    cuda_graph: bool,
    inline_infer: bool,
) -> None:
    """Serve a model bundle, or every model of a repository, over HTTP: POST /v1/infer,
    /v1/models/NAME/infer, /v2/models/NAME/infer, GET /healthz, /readyz, /metrics."""
    from edge_runtime.service import InferenceService, ServiceConfig, pin_cpus
    from edge_runtime.service import serve as run_server
    from edge_runtime.thermal import ThermalPolicy
    from edge_runtime.tune import apply, parse_cpus, plan

    if cpus:
        pin_cpus(parse_cpus(cpus))
    try:
        policy = ThermalPolicy(soft_c=soft_temp, hard_c=hard_temp, degraded_rate_hz=degraded_rate)
    except ValueError as exc:
        raise EdgeError(f"Thermal limits are invalid: {exc}.") from None

    on_change = None
    if degraded_power_mode is not None:

        def on_change(old: str, new: str) -> None:
            if new == "degraded":
                apply(plan(power_mode=degraded_power_mode))

    config = ServiceConfig(
        bundle=bundle,
        cache=cache,
        backend=backend,
        precision=precision,
        max_body_bytes=int(max_body_mb * (1 << 20)),
        warmup_runs=warmup,
        deadline_ms=deadline_ms,
        hung_exit_s=hung_exit_s,
        thermal=policy,
        device_root=device_root,
        on_thermal_change=on_change,
        intra_op_threads=threads,
        spin_wait=spin_wait,
        cuda_graph=cuda_graph,
        inline_infer=inline_infer,
        models=models,
        slots=slots,
        memory_budget_mb=memory_budget_mb,
    )
    service = InferenceService(config, say=lambda msg: click.echo(f"edge-runtime: {msg}", err=True))
    try:
        service.prepare()  # missing bundle, unusable backend, unwritable cache: one sentence, before listening
    except BackendUnavailable as exc:
        # --backend tensorrt where TensorRT or the GPU is missing: TensorRT's own sentence, kept on one line
        # (a library's message can span lines), so the container log shows why the service never listened.
        raise BackendUnavailable(" ".join(str(exc).split())) from None

    bridge = None
    on_ready = on_stop = on_standby = on_takeover = on_exit_signal = None
    if ros2:
        try:
            from edge_runtime.ros2 import Ros2Bridge, Ros2Config
        except ImportError as exc:
            raise EdgeError(
                f"--ros2 needs edge_runtime.ros2 and cyclonedds, which are not importable ({exc})."
            ) from None
        try:  # one bridge: its topics feed one model, or a pipeline of several
            target = service.target(ros2_model)
        except RequestError as exc:
            raise EdgeError(f"--ros2-model: {exc}") from None

        def infer(feeds: Any) -> Any:
            return service.infer(feeds, ros2_model)

        bridge = Ros2Bridge(
            infer=infer, inputs=target.inputs, config=Ros2Config.from_env(), registry=service.registry
        )

        def on_ready() -> None:
            bridge.start()
            service.say("ROS 2 bridge started")

        def on_stop() -> None:
            bridge.stop()

        def on_standby() -> None:  # a hand-over candidate: gated first, silent until the takeover
            bridge.standby()
            service.say("ROS 2 bridge in standby: no action published until SIGUSR1 takes over")

        def on_takeover() -> None:
            at = bridge.take_over()
            service.say(
                f"ROS 2 bridge took over: observations stamped from {at:.6f} on are its own "
                f"(announced to {bridge.bridges_reached} running bridge(s))"
            )

        def on_exit_signal() -> None:
            bridge.quiesce()

    run_server(
        service,
        host=host,
        port=port,
        drain_timeout_s=drain_s,
        on_ready=on_ready,
        on_stop=on_stop,
        on_standby=on_standby,
        on_takeover=on_takeover,
        on_exit_signal=on_exit_signal,
    )
