"""What happened on a robot, in the words every fleet operation reports: the outcome vocabulary, one
robot's result in a rollout or rollback, and the typed records of status, history and inference."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, TypedDict

# Outcomes of one robot in a rollout or rollback.
UPDATED = "updated"  # now on the new version and healthy
UNCHANGED = "unchanged"  # was already on the version and healthy
ROLLED_BACK = "rolled_back"  # new version failed its gate; previous release restored
FAILED = "failed"  # failed before switching (pull, upload) or could not be restored
SKIPPED = "skipped"  # update lock held, version marked bad here
REFUSED = "refused"  # disk too full, host key, signature
UNREACHABLE = "unreachable"
NOT_REACHED = "not_reached"  # the rollout stopped before this robot's wave
PLANNED = "planned"  # dry run
FAILURES = {ROLLED_BACK, FAILED, REFUSED, UNREACHABLE}


@dataclass
class RobotResult:
    """What happened on one robot; the rollout's JSON summary is a list of these."""

    robot: str
    version: str
    outcome: str
    reason: str = ""
    previous: str | None = None
    stage: str = ""  # the step that decided the outcome
    timings: dict[str, float] = field(default_factory=dict)  # seconds per step
    uploaded_bytes: int = 0
    engine: dict[str, Any] = field(default_factory=dict)  # the pre-built engine: hit, build_seconds, key
    retries: dict[str, int] = field(default_factory=dict)  # step ("connect", "pull") → retries it took
    image_bytes: int | None = None  # bytes of image the robot received (ssh-copy counts them; else None)
    # How the switch was made: "strategy" (hand-over or stop-start) and, when a hand-over was asked for
    # but stop-start made it, "fallback" (why: memory, nothing running, an edge-runtime without it).
    update: dict[str, str] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.outcome in FAILURES

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Steps:
    """The named steps of one robot's operation, each timed into ``timings`` (seconds) in one place, with
    the step under way kept so that a failure names where it happened: ``with steps("pull"): ...``."""

    def __init__(self, timings: dict[str, float]) -> None:
        self.timings = timings
        self.current = ""

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self.current = name
        t0 = time.monotonic()
        try:
            yield
        finally:
            self.timings[name] = round(time.monotonic() - t0, 3)


class RobotStatus(TypedDict, total=False):
    """One robot in ``fleet_status``: the release state.json records, what really runs, health, engine."""

    robot: str
    version: str | None  # what runs: the recorded release, or the one a hand-pinned image resolves to
    previous: str | None
    image: str | None
    container: str  # docker's state of the service container ("absent" when none)
    health: str  # docker's health of it, or "unreachable"
    last_result: str | None
    updated: str | None
    drift: dict[str, Any] | None  # a release pinned by hand (see RobotStore.drift), else None
    recorded: str | None  # with drift: the release state.json records
    bad_versions: list[str]
    engine: dict[str, Any]  # /readyz of a running service, or {"error": …}
    models: dict[str, str]  # several models: each one's backend when ready, else "not ready: <reason>"
    reason: str  # an unreachable robot: why


# One line of a robot's history.jsonl (the robot's edge-update.sh writes some of them too); "from" (the
# release it started from) is a Python keyword, hence the functional form.
HistoryEntry = TypedDict(
    "HistoryEntry",
    {
        "at": str,
        "action": str,  # deploy, rollback, manual-change, auto-rollback …
        "version": "str | None",
        "from": "str | None",
        "result": str,
        "reason": str,
        "stage": str,
        "image": str,
        "timings": "dict[str, float]",
        "detected_by": str,
    },
    total=False,
)


class InferAnswer(TypedDict, total=False):
    """One robot's answer in ``fleet_infer``: its outputs by name and the round trip, or why not."""

    robot: str
    version: str | None
    ok: bool
    outputs: dict[str, Any]
    service_ms: float | None  # the service's own latency (None for the smoke input)
    round_trip_ms: float
    error: str
    models: dict[str, Any]  # several models: each one's outputs and round trip (the smoke input), by name
