"""``edge-deploy fleet``: the robots of a fleet inventory (rollout, rollback, status, history, infer) and, under
``fleet sim``, simulated robots. Sub-commands load on use."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edge_deploy.cli.options import devices_option, fleet_option, group_option, json_option
from edge_runtime.cli.app import Lazy, lazy_group

fleet = lazy_group(
    "fleet",
    {
        "rollout": Lazy(
            "edge_deploy.cli.rollout:rollout",
            "Roll a release out in waves, with health gates and automatic rollback.",
        ),
        "rollback": Lazy(
            "edge_deploy.cli.rollout:rollback",
            "Go back to a release kept on the robots (the previous one, or a named one).",
        ),
        "status": Lazy(
            "edge_deploy.cli.rollout:status",
            "Version, digest, health, engine state and last result of each robot.",
        ),
        "history": Lazy("edge_deploy.cli.rollout:history", "Deploys and rollbacks recorded on one robot."),
        "infer": Lazy("edge_deploy.cli.fleet:infer", "Send one inference to each robot's running release."),
        "sim": Lazy("edge_deploy.cli.sim:sim_group", "Simulated robots for tests and the quickstart."),
        # old spellings, hidden, kept for one version
        "simulate": Lazy("edge_deploy.cli.sim:start", replaced_by="fleet sim start"),
        "stop": Lazy("edge_deploy.cli.sim:stop", replaced_by="fleet sim stop"),
        "list": Lazy("edge_deploy.cli.sim:list_", replaced_by="fleet sim list"),
    },
    "Roll releases out to the robots of a fleet inventory and watch them; simulated robots under `sim`.",
)


@click.command("infer")
@fleet_option()
@group_option()
@devices_option()
@json_option()
def infer(fleet_file: Path, group: str | None, devices: tuple[str, ...], as_json: bool) -> None:
    """Send one inference to each robot's running release over SSH (an input made from the served model's
    own metadata) and print its outputs."""
    import numpy as np

    from edge_deploy.fleet import fleet_infer

    rows = fleet_infer(fleet_file, group=group, devices=list(devices) or None)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    for r in rows if not as_json else []:
        if not r.get("ok"):
            click.echo(f"{r['robot']:<16} FAILED  {r.get('error')}")
            continue
        shown = []
        per_model = r.get("models") or {"": {"outputs": r["outputs"]}}  # several models: each one's outputs
        for model, answer in per_model.items():
            for name, value in answer["outputs"].items():  # every output the model gives, first 8 values
                flat = np.ravel(
                    np.asarray(value.get("data", []) if isinstance(value, dict) else value, dtype=float)
                )
                values = f"{[round(v, 4) for v in flat[:8].tolist()]}{' …' if flat.size > 8 else ''}"
                shown.append(f"{model + '.' if model else ''}{name} {values}")
        click.echo(
            f"{r['robot']:<16} {r.get('version') or '-':<10} {'  '.join(shown)}  "
            f"({r['round_trip_ms']:.0f} ms round trip)"
        )
    if any(not r.get("ok") for r in rows):
        raise SystemExit(1)
