"""Contract harness: TensorRT's real Python bindings (10.3, 10.13, 11.4) on a machine without TensorRT.

For each version it keeps, under ``.edge/tensorrt/<version>/`` (gitignored, re-used when present):

    wheels/   the bindings wheel from PyPI (``pip download``)
    site/     the wheel installed with ``pip install --no-deps --target``, plus ``tensorrt`` → the wheel's
              ``tensorrt_bindings`` package (a symlink: JetPack's python3-libnvinfer installs it as ``tensorrt``)
    lib/      STAND-IN native libraries (libnvinfer.so.N, libnvonnxparser.so.N, libnvinfer_plugin.so.N) built
              with ``cc`` from docker/standin/nvinfer_standin.c: they export the nine symbols the bindings
              take, each returning NULL, so the module imports and ``trt.Builder(logger)`` raises the
              ``factory function returned nullptr`` TypeError. Not TensorRT: nothing here builds an engine.
    stubs/    type stubs generated from the real module with pybind11-stubgen, then cleaned (below)
    ready.json  what the above was made from; a matching stamp makes ``prepare`` a no-op

Usage: ``scripts/tensorrt-contract [prepare|mypy|env VERSION] [--version V ...]``. The contract tests
(tests/integration/test_tensorrt_contract.py) call ``prepare`` themselves.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import keyword
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

REPO = Path(__file__).resolve().parents[2]
ROOT = REPO / ".edge" / "tensorrt"
STANDIN_C = REPO / "docker" / "standin" / "nvinfer_standin.c"
STANDIN_LIBS = ("libnvinfer", "libnvonnxparser", "libnvinfer_plugin")
# Bump when what ``prepare`` makes changes (layout, stub clean-up), so cached trees are made again.
RECIPE = 2
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@dataclass(frozen=True)
class Bindings:
    """One TensorRT Python bindings wheel on PyPI and what it matches on the robots."""

    package: str
    version: str
    platforms: tuple[str, ...]  # manylinux tags pip may accept (it matches them exactly)
    matches: str

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])


VERSIONS: dict[str, Bindings] = {
    b.version: b
    for b in (
        Bindings(
            "tensorrt-cu12-bindings",
            "10.3.0",
            ("manylinux_2_17_x86_64", "manylinux2014_x86_64"),
            "JetPack 6 (L4T r36.4)",
        ),
        Bindings(
            "tensorrt-cu12-bindings", "10.13.3.9", ("manylinux_2_28_x86_64",), "JetPack 7 (Jetson Thor)"
        ),
        Bindings("tensorrt-cu13-bindings", "11.4.0.106", ("manylinux_2_28_x86_64",), "the newest TensorRT"),
    )
}


class HarnessError(Exception):
    """One sentence saying why the harness cannot prepare a version here."""


@dataclass(frozen=True)
class TensorRTTree:
    """A prepared version: where its module, stand-in libraries and stubs are."""

    bindings: Bindings
    root: Path

    @property
    def site(self) -> Path:
        return self.root / "site"

    @property
    def lib(self) -> Path:
        return self.root / "lib"

    @property
    def stubs(self) -> Path:
        return self.root / "stubs"

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """Environment for a process that imports this version as ``tensorrt`` (with edge_runtime)."""
        env = dict(os.environ if base is None else base)
        env["PYTHONPATH"] = os.pathsep.join([str(self.site), str(REPO / "runtime"), str(REPO)])
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (str(self.lib), env.get("LD_LIBRARY_PATH", "")) if p
        )
        return env


def _say(msg: str) -> None:
    print(f"tensorrt-contract: {msg}", file=sys.stderr, flush=True)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _stubgen_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pybind11-stubgen")
    except PackageNotFoundError:
        raise HarnessError(
            "pybind11-stubgen is not installed in this Python; run ./scripts/setup (it is in the dev extra)."
        ) from None


def _check_host() -> None:
    if platform.machine() not in ("x86_64", "AMD64"):
        raise HarnessError(
            f"The contract harness uses the x86_64 bindings wheels; this machine is {platform.machine()}."
        )
    if sys.version_info[:2] != (3, 11):
        raise HarnessError(
            f"The bindings wheels are built for CPython 3.11; this is Python "
            f"{sys.version_info.major}.{sys.version_info.minor}."
        )
    if not STANDIN_C.is_file():
        raise HarnessError(f"The stand-in library source {STANDIN_C.relative_to(REPO)} is missing.")
    if shutil.which("cc") is None:
        raise HarnessError("No C compiler (cc) on PATH to build the stand-in TensorRT libraries.")


def _pip(args: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )


def _wheel(b: Bindings, wheels: Path) -> Path:
    """The cached wheel, or one fetched from PyPI."""
    name = b.package.replace("-", "_")
    found = sorted(wheels.glob(f"{name}-{b.version}-*.whl"))
    if found:
        return found[0]
    wheels.mkdir(parents=True, exist_ok=True)
    _say(f"downloading {b.package}=={b.version} from PyPI")
    args = [
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        "3.11",
        "--implementation",
        "cp",
        "-d",
        str(wheels),
    ]
    for tag in b.platforms:
        args += ["--platform", tag]
    result = _pip([*args, f"{b.package}=={b.version}"])
    found = sorted(wheels.glob(f"{name}-{b.version}-*.whl"))
    if result.returncode != 0 or not found:
        lines = [
            ln
            for ln in (result.stderr or result.stdout).splitlines()
            if ln.strip() and not ln.startswith("WARNING: Location")
        ]
        raise HarnessError(
            f"Could not download {b.package}=={b.version} from PyPI (is PyPI reachable from here?): "
            f"{lines[-1].strip().removeprefix('ERROR: ').rstrip('.') if lines else 'pip gave no reason'}."
        )
    return found[0]


def _install(wheel: Path, site: Path) -> None:
    tmp = site.with_name("site.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    result = _pip(["install", "--no-deps", "--no-index", "--no-compile", "--target", str(tmp), str(wheel)])
    if result.returncode != 0:
        raise HarnessError(f"pip could not install {wheel.name}: {result.stderr.strip().splitlines()[-1:]}.")
    if not (tmp / "tensorrt_bindings" / "__init__.py").is_file():
        raise HarnessError(f"{wheel.name} has no tensorrt_bindings package.")
    (tmp / "tensorrt").symlink_to("tensorrt_bindings", target_is_directory=True)
    shutil.rmtree(site, ignore_errors=True)
    tmp.rename(site)


def _build_standins(major: int, lib: Path) -> None:
    tmp = lib.with_name("lib.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in STANDIN_LIBS:
        out = tmp / f"{name}.so.{major}"
        result = subprocess.run(
            ["cc", "-shared", "-fPIC", "-O2", "-o", str(out), str(STANDIN_C)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if result.returncode != 0:
            raise HarnessError(f"cc could not build the stand-in {out.name}: {result.stderr.strip()[:200]}.")
    shutil.rmtree(lib, ignore_errors=True)
    tmp.rename(lib)


# -- stub clean-up --------------------------------------------------------------------------------------
_DEF_RE = re.compile(r"^(?P<indent>\s*)def (?P<name>\w+)\((?P<params>.*)\)(?P<ret>\s*->\s*.+)?:\s*$")
_ATTR_RE = re.compile(r"^(?P<indent>\s*)(?P<name>\w+): (?P<ann>.+?)(?P<rest>\s*(#.*)?)$")


def _split_params(params: str) -> list[str]:
    """Split a parameter list at its top-level commas (brackets nest)."""
    out, depth, cur = [], 0, []
    for ch in params:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    if "".join(cur).strip():
        out.append("".join(cur).strip())
    return out


def _builtin_bool(annotation: str) -> str:
    """Annotations mean the builtin ``bool``, which the module's own ``bool`` (a DataType) shadows; raw C++
    types stubgen could not name (``...``, ``capsule``) become ``typing.Any``."""
    annotation = re.sub(r"(?<![\w.])bool(?![\w])", "builtins.bool", annotation)
    annotation = re.sub(r"(?<![\w.])capsule(?![\w])", "typing.Any", annotation)
    return "typing.Any" if annotation.strip() == "..." else annotation


def _fix_param(param: str) -> str:
    name, sep, rest = param.partition(":")
    name = name.strip()
    bare = name.lstrip("*")
    if keyword.iskeyword(bare):  # e.g. ``in`` in the plugin interfaces
        name = name.replace(bare, f"{bare}_")
    if not sep:
        return name
    ann, eq, default = rest.partition("=")
    return f"{name}: {_builtin_bool(ann.strip())}" + (f" = {default.strip()}" if eq else "")


def _fix_def(line: str) -> str:
    m = _DEF_RE.match(line)
    if not m:
        return line
    params = [_fix_param(p) for p in _split_params(m.group("params"))]
    # A parameter without a default after ones with defaults (``add_scale_nd``): the earlier defaults
    # cannot be used positionally anyway, so the stub drops them.
    last_required = max(
        (i for i, p in enumerate(params) if "=" not in p and not p.startswith("*")), default=-1
    )
    params = [p.split(" = ")[0] if i < last_required else p for i, p in enumerate(params)]
    ret = m.group("ret") or ""
    if ret:
        ret = " -> " + _builtin_bool(ret.split("->", 1)[1].strip())
    return f"{m.group('indent')}def {m.group('name')}({', '.join(params)}){ret}:"


def clean_stub(text: str) -> str:
    """Make pybind11-stubgen's output acceptable to mypy without changing what it declares."""
    out: list[str] = []
    in_doc = False
    for line in text.splitlines():
        if not in_doc:
            if _DEF_RE.match(line):
                line = _fix_def(line)
            elif (
                (m := _ATTR_RE.match(line))
                and not line.lstrip().startswith(("import ", "from "))
                and not (m.group("indent") == "" and m.group("name") == "bool")  # the DataType itself stays
            ):
                line = (
                    f"{m.group('indent')}{m.group('name')}: {_builtin_bool(m.group('ann'))}{m.group('rest')}"
                )
        if line.count('"""') % 2 == 1:
            in_doc = not in_doc
        out.append(line)
    text = "\n".join(out) + "\n"
    # The bindings give IHostMemory (serialized engines, timing caches) the buffer protocol, which
    # stubgen cannot see: declare it, so bytes(memoryview(plan)) type-checks.
    text = text.replace(
        "\nclass IHostMemory:\n",
        "\nclass IHostMemory:\n    def __buffer__(self, flags: int, /) -> memoryview: ...\n",
        1,
    )
    if "builtins.bool" in text and "\nimport builtins\n" not in text:
        text = text.replace(
            "from __future__ import annotations\n", "from __future__ import annotations\nimport builtins\n", 1
        )
    return text


def _make_stubs(tree: TensorRTTree) -> None:
    tmp = tree.root / "stubs.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    result = subprocess.run(
        [sys.executable, "-m", "pybind11_stubgen", "-o", str(tmp), "tensorrt"],
        capture_output=True,
        text=True,
        timeout=600,
        env=tree.env(),
        cwd=tree.root,
    )
    pkg = tmp / "tensorrt"
    if result.returncode != 0 or not (pkg / "__init__.pyi").is_file():
        raise HarnessError(
            f"pybind11-stubgen could not generate stubs for TensorRT {tree.bindings.version}: "
            f"{(result.stderr.strip().splitlines() or ['no output'])[-1]}."
        )
    for stub in pkg.glob("*.pyi"):
        stub.write_text(clean_stub(stub.read_text()))
    shutil.rmtree(tree.stubs, ignore_errors=True)
    tmp.rename(tree.stubs)


def _fingerprint(b: Bindings, wheel: Path | None) -> dict[str, object]:
    return {
        "recipe": RECIPE,
        "package": b.package,
        "version": b.version,
        "wheel": wheel.name if wheel else None,
        "wheel_sha256": _sha256(wheel) if wheel else None,
        "standin_sha256": _sha256(STANDIN_C),
        "stubgen": _stubgen_version(),
        "cleanup_sha256": hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16],
    }


def prepare(version: str, root: Path = ROOT) -> TensorRTTree:
    """Make (or re-use) the tree for one version; raise HarnessError with one sentence if it cannot."""
    if version not in VERSIONS:
        raise HarnessError(f"Unknown TensorRT version {version!r}; the harness knows {', '.join(VERSIONS)}.")
    _check_host()
    b = VERSIONS[version]
    tree = TensorRTTree(b, root / version)
    tree.root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f"{version}.lock"), timeout=900):
        stamp = tree.root / "ready.json"
        wheels = tree.root / "wheels"
        cached = sorted(wheels.glob(f"{b.package.replace('-', '_')}-{b.version}-*.whl"))
        if cached and stamp.is_file() and all(p.is_dir() for p in (tree.site, tree.lib, tree.stubs)):
            try:
                if json.loads(stamp.read_text()) == _fingerprint(b, cached[0]):
                    return tree
            except ValueError:
                pass
        stamp.unlink(missing_ok=True)
        wheel = _wheel(b, wheels)
        _say(f"preparing TensorRT {version} ({b.matches}) in {tree.root.relative_to(REPO)}")
        _install(wheel, tree.site)
        _build_standins(b.major, tree.lib)
        _make_stubs(tree)
        stamp.write_text(json.dumps(_fingerprint(b, wheel), indent=2) + "\n")
    return tree


def mypy_config(tree: TensorRTTree) -> Path:
    """A mypy config for checking against this version's stubs: ``tensorrt`` must resolve to them
    (the project's config ignores missing imports, which would turn a missing stub into Any)."""
    cfg = tree.root / "mypy.ini"
    cfg.write_text(
        "[mypy]\n"
        "python_version = 3.11\n"
        f"mypy_path = {tree.stubs}:{REPO / 'runtime'}\n"
        "ignore_missing_imports = True\n"
        "check_untyped_defs = True\n"
        "warn_unused_ignores = True\n"
        f"cache_dir = {tree.root / 'mypy-cache'}\n"
        "[mypy-tensorrt,tensorrt.*]\n"
        "ignore_missing_imports = False\n"
        # What is left inside the generated stubs (pybind11 vector types' self annotations, __eq__
        # signatures, implicit Optional defaults) is not ours to fix and does not change what they declare.
        "ignore_errors = True\n"
    )
    return cfg


MYPY_TARGETS = ("runtime/edge_runtime/backends/tensorrt.py",)


def run_mypy(tree: TensorRTTree, targets: Iterable[str] = MYPY_TARGETS) -> subprocess.CompletedProcess[str]:
    cfg = mypy_config(tree)
    env = dict(os.environ, MYPYPATH=str(tree.stubs))
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(cfg), *targets],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=900,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/tensorrt-contract", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("prepare", "mypy", "env"), nargs="?", default="prepare")
    parser.add_argument(
        "--version",
        action="append",
        choices=list(VERSIONS),
        help="a TensorRT version (repeatable; default: all)",
    )
    args = parser.parse_args(argv)
    versions = args.version or list(VERSIONS)
    try:
        trees = []
        for v in versions:
            t0 = time.monotonic()
            trees.append(prepare(v))
            _say(f"TensorRT {v} ready in {time.monotonic() - t0:.1f} s")
    except HarnessError as exc:
        _say(str(exc))
        if args.command == "mypy" and not IN_CI:
            _say("the TensorRT stubs check did not run here (under CI=true this is a failure)")
            return 0
        return 1
    if args.command == "env":
        for tree in trees:
            env = tree.env({})
            print(
                f"export PYTHONPATH={env['PYTHONPATH']} LD_LIBRARY_PATH={env['LD_LIBRARY_PATH']}"
                f"  # TensorRT {tree.bindings.version}"
            )
        return 0
    if args.command == "mypy":
        failed = 0
        for tree in trees:
            t0 = time.monotonic()
            result = run_mypy(tree)
            _say(
                f"mypy against TensorRT {tree.bindings.version} stubs: "
                f"{(result.stdout.strip().splitlines() or ['no output'])[-1]} ({time.monotonic() - t0:.1f} s)"
            )
            if result.returncode != 0:
                print(result.stdout, end="")
                failed += 1
        return 1 if failed else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
