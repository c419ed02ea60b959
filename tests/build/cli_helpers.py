"""Run the ``edge-deploy`` CLI in-process the way the console script does (exit code, stdout, stderr)."""

from __future__ import annotations

import pytest

from edge_deploy.cli import main


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    code = exc.value.code
    return (code if isinstance(code, int) else 1), out, err
