"""Print the pip requirements of extras from pyproject.toml (run on the build platform, Python ≥ 3.11).

    python3 requirements.py pyproject.toml device,jetson [EXCLUDED-NAME ...]

The images install dependencies in their own cached layer, before the source is copied, so a code change
does not reinstall torch or onnxruntime; this keeps pyproject.toml the one place they are declared.
"""

from __future__ import annotations

import re
import sys

import tomllib


def requirements(pyproject: str, extra: str) -> list[str]:
    """The base dependencies plus those of ``extra`` (comma-separated extras), self-references followed."""
    with open(pyproject, "rb") as f:
        project = tomllib.load(f)["project"]
    extras = project.get("optional-dependencies", {})
    out: list[str] = list(project.get("dependencies", []))
    pending = [e.strip() for e in reversed(extra.split(",")) if e.strip()]
    seen: set[str] = set()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        if name not in extras:
            sys.exit(f"pyproject.toml has no extra {name!r}")
        for req in extras[name]:
            self_ref = re.fullmatch(r"edge-deploy\[([\w,-]+)\]", req.replace(" ", ""))
            if self_ref:
                pending.extend(self_ref.group(1).split(","))
            elif req not in out:
                out.append(req)
    return out


if __name__ == "__main__":
    excluded = set(sys.argv[3:])  # packages installed separately (torch from a wheelhouse)
    for req in requirements(sys.argv[1], sys.argv[2]):
        if re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0] not in excluded:
            print(req)
