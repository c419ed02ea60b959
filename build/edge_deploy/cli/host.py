"""``edge-deploy host setup|status|env|teardown``: the Docker harness on this machine (scripts/host-setup)."""

from __future__ import annotations

import subprocess
import sys

import click

from edge_deploy.images.files import tool_files


def _script(name: str, *args: str) -> int:
    """Run one of the tool's shipped host scripts (bash: a wheel may not keep their executable bit)."""
    path = tool_files().require(f"scripts/{name}")
    return subprocess.run(["bash", str(path), *args], check=False).returncode


@click.group()
def host() -> None:
    """Install and start Docker, buildx, compose, a local registry, QEMU (arm64), sshd and cosign."""


@host.command()
@click.option("--no-bases", is_flag=True, help="Skip building the stand-in L4T base images.")
def setup(no_bases: bool) -> None:
    """Install what is missing and start it (idempotent)."""
    sys.exit(_script("host-setup", *(["--no-bases"] if no_bases else [])))


@host.command()
def status() -> None:
    """Report what is present; exit 1 if anything is missing."""
    sys.exit(_script("host-setup", "--check"))


# `check` is the same report under the name scripts/host-setup uses (--check).
host.add_command(status, name="check")


@host.command()
def env() -> None:
    """Print KEY=VALUE lines (EDGE_HOST_BIN, EDGE_REGISTRY, EDGE_STATE, ...) for other tools."""
    sys.exit(_script("host-setup", "--env"))


@host.command()
def teardown() -> None:
    """Stop what setup started, by recorded PID."""
    sys.exit(_script("host-teardown"))
