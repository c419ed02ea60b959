"""The ``edge-deploy`` command tree as a user meets it: a layout that follows the work, old spellings that
still run (with one note on stderr), env vars shown in --help, help that imports no command, and library
errors that name options the command spells as its own flags."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from edge_deploy.bundle.writer import check_writable
from edge_deploy.cli import EXTRAS, cli
from edge_runtime.cli.app import flag_names, missing_extra
from edge_runtime.errors import EdgeError
from tests.build.cli_helpers import run_cli

ROOT = Path(__file__).resolve().parents[2]


def commands_listed(help_text: str) -> list[str]:
    """The names in a --help text's Commands section, in order."""
    section = help_text.split("Commands:", 1)[1]
    return [m.group(1) for m in re.finditer(r"^  (\S+)\s", section, re.MULTILINE)]


def walk(command: click.Command, ctx: click.Context) -> Iterator[tuple[str, click.Command]]:
    """Every command of the tree (old spellings included) with its path."""
    yield ctx.command_path, command
    if isinstance(command, click.Group):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            assert sub is not None, name
            yield from walk(sub, click.Context(sub, parent=ctx, info_name=name))


def test_help_lists_the_commands_in_the_order_of_the_work(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0
    assert commands_listed(out) == [
        "sample-model",
        "convert",
        "bench",
        "host",
        "image",
        "release",
        "fleet",
        "deploy",
        "site",
        "agent",
    ]
    for group, expected in (
        ("release", ["create", "list", "show", "verify", "promote"]),
        ("fleet", ["rollout", "rollback", "status", "history", "infer", "sim"]),
    ):
        code, out, _ = run_cli(capsys, group, "--help")
        assert code == 0 and commands_listed(out) == expected, out
    code, out, _ = run_cli(capsys, "fleet", "sim", "--help")
    assert code == 0 and commands_listed(out) == ["start", "stop", "list"], out


@pytest.fixture()
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A git checkout with a fleet.yaml that names an unknown Jetson model, and no releases."""
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "fleet.yaml").write_text(
        "robots:\n  - name: arm-1\n    host: 10.0.0.1\n    jetson_model: tx2\n"
    )
    monkeypatch.chdir(tmp_path)
    return tmp_path


# old spelling, its replacement, and the arguments both take
OLD_SPELLINGS = [
    ("verify", "release verify", ["9.9.9"]),
    ("promote", "release promote", ["9.9.9", "--channel", "stable"]),
    ("rollout", "fleet rollout", ["0.1.0", "--dry-run"]),
    ("rollback", "fleet rollback", ["--json"]),
    ("status", "fleet status", []),
    ("history", "fleet history", ["--device", "arm-1"]),
    ("fleet list", "fleet sim list", ["--state-root", "sims"]),
    ("fleet stop", "fleet sim stop", ["--state-root", "sims"]),
    ("fleet simulate", "fleet sim start", ["--robots", "0"]),
]


@pytest.mark.parametrize(("old", "new", "args"), OLD_SPELLINGS, ids=[o for o, _, _ in OLD_SPELLINGS])
def test_old_spelling_runs_the_same_command_after_one_note(
    old: str, new: str, args: list[str], workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    new_code, new_out, new_err = run_cli(capsys, *new.split(), *args)
    old_code, old_out, old_err = run_cli(capsys, *old.split(), *args)
    assert new_code != 0 or new_out  # the command did something a user sees
    assert "Traceback" not in new_err + old_err
    note, _, rest = old_err.partition("\n")
    assert note == (
        f"note: `edge-deploy {old}` is now `edge-deploy {new}`; the old spelling goes in the next version."
    )
    rest = rest.replace(f"edge-deploy {old} ", f"edge-deploy {new} ")  # a usage line names what was typed
    assert (old_code, old_out, rest) == (new_code, new_out, new_err)


def test_old_spellings_are_hidden(capsys: pytest.CaptureFixture[str]) -> None:
    _, top, _ = run_cli(capsys, "--help")
    _, fleet, _ = run_cli(capsys, "fleet", "--help")
    listed = commands_listed(top) + commands_listed(fleet)
    assert not {"verify", "promote", "rollout", "rollback", "status", "history"} & set(commands_listed(top))
    assert not {"simulate", "stop", "list"} & set(listed)


def test_help_imports_no_command_module() -> None:
    """Listing the commands loads none of them, so it needs no extra (torch, yaml, asyncssh, rich...)."""
    code = (
        "import contextlib, io, json, sys\n"
        "from edge_deploy.cli import main\n"
        "for argv in (['--help'], ['fleet', '--help']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "        main(argv)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    loaded = set(json.loads(p.stdout))
    assert not {m for m in loaded if m.split(".")[0] in EXTRAS}, "help imported an extra's module"
    assert not {m for m in loaded if m.startswith("edge_deploy.cli.")} - {
        "edge_deploy.cli.fleet",
        "edge_deploy.cli.options",
    }


def test_every_env_var_is_shown_in_help() -> None:
    root = click.Context(cli, info_name="edge-deploy")
    seen = set()
    for path, command in walk(cli, root):
        for param in command.params:
            if isinstance(param, click.Option) and param.envvar:
                assert param.show_envvar, f"{path} {param.opts[0]} hides {param.envvar}"
                ctx = click.Context(command, info_name=path, terminal_width=200)
                assert f"env var: {param.envvar}" in command.get_help(ctx), path
                seen.add(param.envvar)
    assert {"EDGE_FLEET", "EDGE_REGISTRY", "EDGE_COSIGN_KEY", "EDGE_COSIGN_PUB", "EDGE_L4T_BASE"} <= seen


def test_shared_options_mean_the_same_everywhere() -> None:
    """--json, --fleet, --group, --device and --releases-dir: one declaration, so one meaning."""
    root = click.Context(cli, info_name="edge-deploy")
    found: dict[str, set[tuple[object, ...]]] = {}
    for _, command in walk(cli, root):
        for param in command.params:
            if isinstance(param, click.Option) and param.opts[0] in (
                "--json",
                "--fleet",
                "--group",
                "--releases-dir",
            ):
                found.setdefault(param.opts[0], set()).add(
                    (param.name, param.is_flag, param.envvar, str(param.default))
                )
    assert set(found) == {"--json", "--fleet", "--group", "--releases-dir"}
    assert all(len(shapes) == 1 for shapes in found.values()), found


def test_library_errors_name_options_and_the_cli_spells_them_as_flags(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(EdgeError) as exc:
        check_writable(tmp_path)
    assert "pass `force` to replace it" in str(exc.value) and exc.value.options == ("force",)
    root = click.Context(cli, info_name="edge-deploy")
    commands = dict(walk(cli, root))
    names = flag_names(commands["edge-deploy fleet rollout"])
    assert names["public_key"] == "--key" and names["releases_dir"] == "--releases-dir"
    assert names["insecure_skip_signature_check"] == "--insecure-skip-signature-check"
    assert exc.value.spelled(flag_names(commands["edge-deploy convert"])).endswith(
        "pass --force to replace it."
    )


LIBRARY_AREAS = ("model", "images", "release", "bundle")


def test_library_error_messages_name_no_cli_flag() -> None:
    """Sentences raised by the library (outside cli/) name options by keyword, never as `--flag`."""
    flag = re.compile(r"(?<![\w-])--[a-z]")
    offenders = []
    for area in LIBRARY_AREAS:
        for path in sorted((ROOT / "build" / "edge_deploy" / area).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Raise) and node.exc is not None:
                    for const in ast.walk(node.exc):
                        text = const.value if isinstance(const, ast.Constant) else None
                        if isinstance(text, str) and flag.search(text):
                            offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {text}")
    assert not offenders, "\n".join(offenders)


def test_extras_name_every_package_of_host_and_device() -> None:
    """Each `[host]`/`[device]` requirement of pyproject.toml has an import name the CLI maps to an extra that
    installs it (a missing one is then one sentence naming the extra, not a traceback)."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    modules_of: dict[str, set[str]] = {}
    for module, dists in importlib.metadata.packages_distributions().items():
        for dist in dists:
            modules_of.setdefault(canonicalize_name(dist), set()).add(module)
    for extra, accepted in (("device", {"device"}), ("host", {"host", "device"})):
        for spec in extras[extra]:
            req = Requirement(spec)
            if req.name == "edge-deploy":
                continue
            modules = modules_of.get(canonicalize_name(req.name), set())
            assert any(EXTRAS.get(m) in accepted for m in modules), (req.name, extra, modules)


def test_missing_extra_is_one_sentence() -> None:
    sentence = missing_extra(ModuleNotFoundError("No module named 'yaml'", name="yaml"), EXTRAS)
    assert (
        sentence
        == "this command needs yaml, which comes with the host extra: pip install 'edge-deploy[host]'."
    )
    assert missing_extra(ModuleNotFoundError("x", name="edge_deploy.nope"), EXTRAS) is None
