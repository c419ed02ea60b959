"""Real-time tuning on a Jetson: power mode (nvpmodel), pinned clocks (jetson_clocks), CPU pinning.

Where the tools are absent (a developer machine, a container without them) the exact commands are
shown instead of run, so an operator can apply them by hand.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import asdict, dataclass

from edge_runtime.errors import DeviceError, EdgeError


@dataclass
class TuneStep:
    what: str
    command: list[str]
    runnable: bool = True  # False: advice only (a command for the operator to start)
    ran: bool = False
    returncode: int | None = None
    output: str = ""

    @property
    def shell(self) -> str:
        return " ".join(self.command)

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "shell": self.shell}


def parse_cpus(text: str) -> list[int]:
    """``0-3,6`` → [0, 1, 2, 3, 6] (the taskset/cpuset list syntax)."""
    cpus: set[int] = set()
    try:
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            lo, _, hi = part.partition("-")
            a, b = int(lo), int(hi or lo)
            if a < 0 or b < a:
                raise ValueError
            cpus.update(range(a, b + 1))
    except ValueError:
        raise EdgeError(f"CPU list {text!r} is not of the form 0-3,6.") from None
    if not cpus:
        raise EdgeError(f"CPU list {text!r} names no CPU.")
    return sorted(cpus)


def plan(
    power_mode: int | None = None,
    max_clocks: bool = False,
    cpus: list[int] | None = None,
    pid: int | None = None,
) -> list[TuneStep]:
    steps = []
    if power_mode is not None:
        if power_mode < 0:
            raise EdgeError(f"Power mode {power_mode} is invalid; nvpmodel modes are 0 or greater.")
        steps.append(
            TuneStep(f"power mode {power_mode} (0 is MAXN on Orin)", ["nvpmodel", "-m", str(power_mode)])
        )
    if max_clocks:
        steps.append(TuneStep("pin CPU, GPU and EMC clocks at their maximum", ["jetson_clocks"]))
    if cpus:
        cpu_list = ",".join(map(str, cpus))
        if pid:
            steps.append(
                TuneStep(
                    f"pin process {pid} and its threads to CPUs {cpu_list}",
                    ["taskset", "-a", "-c", "-p", cpu_list, str(pid)],
                )
            )
        else:  # the service pins itself (os.sched_setaffinity) when started with --cpus
            steps.append(
                TuneStep(
                    f"start the service pinned to CPUs {cpu_list}",
                    ["edge-runtime", "serve", "--cpus", cpu_list],
                    runnable=False,
                )
            )
    if not steps:
        raise EdgeError("Nothing to tune: give --power-mode, --max-clocks or --cpus.")
    return steps


def apply(steps: list[TuneStep], dry_run: bool = False, timeout_s: float = 60.0) -> list[TuneStep]:
    """Run each step whose tool exists (unless dry_run); the rest keep ran=False and show their command."""
    for step in steps:
        exe = shutil.which(step.command[0])
        if dry_run or exe is None or not step.runnable:
            continue
        try:
            proc = subprocess.run([exe, *step.command[1:]], capture_output=True, text=True, timeout=timeout_s)
        except (OSError, subprocess.SubprocessError) as exc:
            raise DeviceError(f"{step.shell} could not run: {exc}.") from None
        step.ran, step.returncode = True, proc.returncode
        step.output = (proc.stdout + proc.stderr).strip()
        if proc.returncode != 0:
            raise DeviceError(
                f"{step.shell} failed with exit code {proc.returncode}: "
                f"{step.output.splitlines()[-1] if step.output else 'no output'}."
            )
    return steps
