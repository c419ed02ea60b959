"""Shared CLI plumbing for ``edge-runtime`` and ``edge-deploy``: lazy sub-commands and one-sentence errors.

Sub-commands are imported only when invoked, and a group's --help lists them from their registered summary
lines, so ``--help`` never imports torch, docker clients or TensorRT (nor any module of a missing extra).
"""

from __future__ import annotations

import copy
import functools
import importlib
import importlib.util
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import click

from edge_runtime.errors import EdgeError

# Import names of the `[device]` extra's packages (and `[ros2]`'s): a command that cannot import one names the
# extra to install instead of ending in a traceback.
DEVICE_MODULES = {
    "onnxruntime": "device",
    "starlette": "device",
    "uvicorn": "device",
    "httptools": "device",
    "prometheus_client": "device",
    "cyclonedds": "ros2",
}


@dataclass(frozen=True)
class Lazy:
    """A sub-command imported on use: ``target`` is ``"pkg.module:attr"``, ``summary`` its line in the
    parent's --help. With ``replaced_by`` (a path such as ``"release verify"``) it is a hidden old spelling
    that says so on stderr and runs the same command."""

    target: str
    summary: str = ""
    replaced_by: str | None = None


class OrderedGroup(click.Group):
    """A click group that lists its commands in the order they were added (the order of the work)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)


class LazyGroup(click.Group):
    """A click group whose sub-commands live in modules named ``"pkg.module:attr"`` (or :class:`Lazy`)."""

    def __init__(
        self, *args: Any, lazy_commands: Mapping[str, str | Lazy] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands: dict[str, str | Lazy] = dict(lazy_commands or {})
        self._loaded: dict[str, click.Command] = {}

    def _available(self, name: str) -> bool:
        entry = self.lazy_commands[name]
        module = (entry if isinstance(entry, str) else entry.target).split(":")[0]
        try:
            return importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            return False

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Lazy commands in the order they were registered (the order of the work), then any others."""
        lazy = [n for n in self.lazy_commands if self._available(n)]
        return lazy + [n for n in super().list_commands(ctx) if n not in self.lazy_commands]

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The commands section from the registered summaries: listing imports no command module."""
        listed: list[tuple[str, str | click.Command]] = []
        for name in self.list_commands(ctx):
            entry = self.lazy_commands.get(name)
            if isinstance(entry, Lazy):
                if entry.replaced_by is None:
                    listed.append((name, entry.summary))
                continue
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                listed.append((name, command))
        limit = formatter.width - 6 - max((len(name) for name, _ in listed), default=0)
        rows = [(n, c if isinstance(c, str) else c.get_short_help_str(limit)) for n, c in listed]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name, command, rest = super().resolve_command(ctx, args)
        entry = self.lazy_commands.get(name or "")
        if isinstance(entry, Lazy) and entry.replaced_by and not ctx.resilient_parsing:
            root = ctx.find_root().info_name or ""
            click.echo(
                f"note: `{ctx.command_path} {name}` is now `{root} {entry.replaced_by}`; "
                "the old spelling goes in the next version.",
                err=True,
            )
        return name, command, rest

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.lazy_commands or not self._available(cmd_name):
            return super().get_command(ctx, cmd_name)
        if cmd_name in self._loaded:
            return self._loaded[cmd_name]
        entry = self.lazy_commands[cmd_name]
        module_name, attr = (entry if isinstance(entry, str) else entry.target).split(":")
        command = getattr(importlib.import_module(module_name), attr)
        if not isinstance(command, click.Command):
            raise TypeError(f"{module_name}:{attr} is not a click command")
        name_flags_in_errors(command)
        if isinstance(entry, Lazy) and entry.replaced_by:
            command = old_spelling(command)
        self._loaded[cmd_name] = command
        return command


def old_spelling(command: click.Command) -> click.Command:
    """``command`` under its old name: the same code, hidden from --help (the group that resolves the old
    name prints the one-line deprecation note)."""
    alias = copy.copy(command)
    alias.hidden = True
    return alias


def flag_names(command: click.Command) -> dict[str, str]:
    """Option keyword → the flag a user types for it in ``command`` (``public_key`` → ``--key``), also by
    the flag's own name (``insecure_skip_signature_check`` → ``--insecure-skip-signature-check``)."""
    names: dict[str, str] = {}
    for param in command.params:
        if not isinstance(param, click.Option) or not param.opts:
            continue
        flag = max(param.opts, key=len)
        for opt in param.opts:
            names.setdefault(opt.lstrip("-").replace("-", "_"), flag)
        if param.name:
            names[param.name] = flag
    return names


def name_flags_in_errors(command: click.Command) -> None:
    """Make ``command`` (and the plain sub-commands of a group) spell the options named in the library's
    errors as its own flags (:meth:`EdgeError.spelled`)."""
    if getattr(command, "_names_flags", False):
        return
    command._names_flags = True  # type: ignore[attr-defined]
    if isinstance(command, click.Group) and not isinstance(command, LazyGroup):
        for sub in command.commands.values():
            name_flags_in_errors(sub)
    callback = command.callback
    if callback is None:
        return

    @functools.wraps(callback)
    def spelled(*args: Any, **kwargs: Any) -> Any:
        try:
            return callback(*args, **kwargs)
        except EdgeError as exc:
            if exc.options:
                exc.args = (exc.spelled(flag_names(command)), *exc.args[1:])
            raise

    command.callback = spelled


def lazy_cli(prog_name: str, version: str, commands: Mapping[str, str | Lazy], help_text: str) -> click.Group:
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


def lazy_group(name: str, commands: Mapping[str, str | Lazy], help_text: str) -> click.Group:
    """A sub-group (``edge-deploy fleet``) whose commands load on use, like the top level's."""
    return LazyGroup(name, lazy_commands=commands, help=help_text)


def configure_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(
        level=max(level, logging.DEBUG),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def missing_extra(exc: ModuleNotFoundError, extras: Mapping[str, str]) -> str | None:
    """The sentence for a module of an extra that is not installed (None: not an extra's module)."""
    module = (exc.name or "").split(".")[0]
    if module not in extras:
        return None
    return (
        f"this command needs {module}, which comes with the {extras[module]} extra: "
        f"pip install 'edge-deploy[{extras[module]}]'."
    )


def run(
    group: click.Group,
    argv: Sequence[str] | None = None,
    prog_name: str | None = None,
    extras: Mapping[str, str] = DEVICE_MODULES,
) -> int:
    """Run a CLI; user errors become one line on stderr and a non-zero exit code, never a traceback.
    ``extras`` maps import names to the extra that installs them (a command of a missing extra)."""
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
    except ModuleNotFoundError as exc:
        sentence = missing_extra(exc, extras)
        if sentence is None or os.environ.get("EDGE_DEBUG"):
            raise
        click.echo(f"error: {sentence}", err=True)
        return 2
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


__all__ = [
    "DEVICE_MODULES",
    "Lazy",
    "LazyGroup",
    "OrderedGroup",
    "configure_logging",
    "lazy_cli",
    "lazy_group",
    "missing_extra",
    "old_spelling",
    "run",
]
