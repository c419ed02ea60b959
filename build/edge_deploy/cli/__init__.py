"""``edge-deploy``: the host-side command (model conversion, images, releases, fleets).

The layout follows the flow: ``sample-model``, ``convert``, ``bench``; ``host``; ``image``; ``release``
(create, list, show, verify, promote); ``fleet`` (rollout, rollback, status, history, infer, and ``sim`` for
simulated robots). Commands load on use, and --help lists them without importing any.
"""

from __future__ import annotations

import sys

from edge_deploy import __version__
from edge_runtime.cli.app import DEVICE_MODULES, Lazy, lazy_cli, run

COMMANDS: dict[str, str | Lazy] = {
    # model pipeline
    "sample-model": Lazy(
        "edge_deploy.cli.sample_model:sample_model",
        "Write a small sample policy (TorchScript) and a calibration set; no downloads.",
    ),
    "convert": Lazy(
        "edge_deploy.cli.convert:convert",
        "Export, sanitize, validate and quantize a model into a model bundle.",
    ),
    "bench": Lazy(
        "edge_deploy.cli.bench:bench",
        "Latency, throughput and peak memory of a model bundle on ONNX Runtime.",
    ),
    # host, images
    "host": Lazy(
        "edge_deploy.cli.host:host",
        "The Docker harness on this machine: setup, status, env, teardown.",
    ),
    "image": Lazy(
        "edge_deploy.cli.image:image",
        "Build the x86 converter image and the L4T arm64 runtime image.",
    ),
    # releases
    "release": Lazy(
        "edge_deploy.cli.release:release",
        "Releases: create (build, push, sign, tag), list, show, verify, promote.",
    ),
    # fleets
    "fleet": Lazy(
        "edge_deploy.cli.fleet:fleet",
        "Robots of a fleet.yaml: rollout, rollback, status, history, infer; sim for simulated robots.",
    ),
    "deploy": Lazy(
        "edge_deploy.cli.deploy:deploy",
        "One model to one robot over SSH, no registry (deploy --to USER@HOST).",
    ),
    # site caches (pull mode)
    "site": Lazy(
        "edge_deploy.cli.site:site",
        "Site caches: a pull-through registry per site (up, down, status).",
    ),
    # pull mode: the robot's agent
    "agent": Lazy(
        "edge_deploy.cli.agent:agent",
        "On a robot: follow its signed channel and apply its releases (pull mode).",
    ),
    # old spellings, hidden, kept for one version
    "verify": Lazy("edge_deploy.cli.release:verify", replaced_by="release verify"),
    "promote": Lazy("edge_deploy.cli.release:promote", replaced_by="release promote"),
    "rollout": Lazy("edge_deploy.cli.rollout:rollout", replaced_by="fleet rollout"),
    "rollback": Lazy("edge_deploy.cli.rollout:rollback", replaced_by="fleet rollback"),
    "status": Lazy("edge_deploy.cli.rollout:status", replaced_by="fleet status"),
    "history": Lazy("edge_deploy.cli.rollout:history", replaced_by="fleet history"),
}

# Import names of the `[host]` extra's packages: with only `[device]` installed, a command that needs one ends
# in one sentence naming `pip install 'edge-deploy[host]'`.
HOST_MODULES = {
    module: "host"
    for module in (
        "torch",
        "onnx",
        "onnxscript",
        "onnx_graphsurgeon",
        "yaml",
        "semver",
        "asyncssh",
        "rich",
        "tenacity",
        "httpx",
    )
}
EXTRAS = {**DEVICE_MODULES, **HOST_MODULES}

cli = lazy_cli(
    "edge-deploy",
    __version__,
    COMMANDS,
    "Build and release PyTorch policies to fleets of NVIDIA Jetson robots.",
)


def main(argv: list[str] | None = None) -> None:
    sys.exit(run(cli, argv, prog_name="edge-deploy", extras=EXTRAS))
