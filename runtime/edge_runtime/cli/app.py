"""Shared CLI plumbing for ``edge-runtime`` and ``edge-deploy``: lazy sub-commands and one-sentence errors.

Sub-commands are imported only when invoked, so ``--help`` and the device-side commands never import
torch, docker clients or TensorRT.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
from collections.abc import Sequence

import click

from edge_runtime.errors import EdgeError


class LazyGroup(click.Group):
    """A click group whose sub-commands live in modules named ``"pkg.module:attr"``."""

    def __init__(self, *args: object, lazy_commands: dict[str, str] | None = None, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.lazy_commands = dict(lazy_commands or {})

    def _available(self, name: str) -> bool:
        module = self.lazy_commands[name].split(":")[0]
        try:
            return importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            return False

    def list_commands(self, ctx: click.Context) -> list[str]:
        lazy = [n for n in self.lazy_commands if self._available(n)]
        return sorted(set(super().list_commands(ctx)) | set(lazy))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy_commands and self._available(cmd_name):
            module_name, attr = self.lazy_commands[cmd_name].split(":")
            command = getattr(importlib.import_module(module_name), attr)
            if not isinstance(command, click.Command):
                raise TypeError(f"{module_name}:{attr} is not a click command")
            return command
        return super().get_command(ctx, cmd_name)


def lazy_cli(prog_name: str, version: str, commands: dict[str, str], help_text: str) -> click.Group:
    """A top-level command (``edge-deploy``, ``edge-runtime``): lazy sub-commands, --version, -v logging."""

    @click.group(
        prog_name,
        cls=LazyGroup,
        lazy_commands=commands,
        help=help_text,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    @click.version_option(version, prog_name=prog_name)
    @click.option("-v", "--verbose", count=True, help="More log output (repeat for debug).")
    def cli(verbose: int) -> None:
        configure_logging(verbose)

    return cli


def configure_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(
        level=max(level, logging.DEBUG),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def run(group: click.Group, argv: Sequence[str] | None = None, prog_name: str | None = None) -> int:
    """Run a CLI; user errors become one line on stderr and a non-zero exit code, never a traceback."""
    try:
        rv = group.main(
            args=list(argv) if argv is not None else None, prog_name=prog_name, standalone_mode=False
        )
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except EdgeError as exc:
        click.echo(f"error: {exc}", err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        return 130
    except OSError as exc:
        if os.environ.get("EDGE_DEBUG"):
            raise
        where = f": {exc.filename}" if exc.filename else ""
        click.echo(f"error: {exc.strerror or exc}{where}.", err=True)
        return 1
    return rv if isinstance(rv, int) else 0
