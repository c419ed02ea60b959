"""Run the external tools an image build needs (pip, docker buildx) with one error vocabulary."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Sequence
from pathlib import Path

from edge_deploy.images.result import ImageError

log = logging.getLogger(__name__)


def run_tool(
    cmd: Sequence[str],
    *,
    what: str,
    env: dict[str, str] | None = None,
    stream: bool = False,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd``; a failure raises ImageError naming ``what`` and the tool's last line of output
    (``stream``: the output goes to the terminal as it comes, and the error names only the exit status)."""
    log.debug("run: %s", " ".join(cmd))
    try:
        proc = subprocess.run(
            list(cmd),
            env=env,
            text=True,
            check=False,
            cwd=cwd,
            stdout=None if stream else subprocess.PIPE,
            stderr=None if stream else subprocess.PIPE,
        )
    except FileNotFoundError:
        raise ImageError(
            f"{what} failed: {cmd[0]} is not installed (see `edge-deploy host setup`)."
        ) from None
    if proc.returncode != 0:
        tail = "" if stream else (proc.stderr or proc.stdout or "").strip().splitlines()[-1:]
        detail = f": {tail[0]}" if tail else ""
        raise ImageError(f"{what} failed (exit {proc.returncode}){detail}")
    return proc
