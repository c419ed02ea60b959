"""The switch to a release, owned by the robot: ``edge-update.sh`` (compose bundle), started detached,
switches ``current``, brings the release up and waits for this side's health gate to confirm it; a failed
``up`` or gate, or no confirmation in time, restores the previous release there, even once the operator's
connection is gone. This side starts it, follows state.json, gates and confirms or reverts, and settles a
switch an earlier run left pending.

The update strategy (docs/fleet.md, "Update strategies") is chosen here: ``hand-over`` (the new release
gated on its own port beside the running one, then taking over the service address) where the robot has
the memory for both releases at once, else ``stop-start``; edge-update.sh makes either."""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

from edge_deploy.fleet import FleetError
from edge_deploy.fleet.compose import (
    PROJECTS,
    SERVICE_FILTER,
    UPDATE_SCRIPT,
    compose_bundle_dir,
    release_dir_name,
)
from edge_deploy.fleet.gate import GateFailed, GateReport, expected_backend, ros2_check, service_check
from edge_deploy.fleet.inventory import UPDATE_STRATEGIES
from edge_deploy.fleet.options import DeployRequest
from edge_deploy.fleet.outcome import Steps
from edge_deploy.fleet.ssh import RobotConnection, q
from edge_deploy.fleet.store import RobotStore

PENDING = ("switching", "awaiting_confirm", "reverting")
SETTLED = ("updated", "rolled_back", "reverted", "failed", "skipped")
POLL_S = 1.0  # how often the operator reads the robot's state while edge-update.sh runs
# Putting the previous release back must not give up as early as a short health timeout for the new one:
# its engine is cached, but a loaded robot (or QEMU) can still take minutes to report healthy.
RESTORE_TIMEOUT_S = 300.0
# A hand-over runs two releases at once: the robot must have, available, what the running release's
# container uses (the new one needs about as much: same runtime, an engine of the same model class) plus
# this margin for the system and the robot's own application.
HANDOVER_HEADROOM_MB = 256


def parse_mem_usage(text: str) -> float | None:
    """MB of a ``docker stats`` MemUsage column ("123.4MiB / 7.6GiB"), None when unreadable."""
    used = text.split("/")[0].strip()
    units = {"B": 1 / 2**20, "KiB": 1 / 1024, "MiB": 1.0, "GiB": 1024.0, "kB": 1e3 / 2**20, "MB": 1e6 / 2**20}
    units |= {"GB": 1e9 / 2**20}
    for unit in sorted(units, key=len, reverse=True):
        if used.endswith(unit):
            try:
                return float(used[: -len(unit)]) * units[unit]
            except ValueError:
                return None
    return None


def handover_memory_problem(meminfo_available_kb: int | None, running_mb: float | None) -> str | None:
    """Why the robot cannot hold two releases at once (the reason a hand-over falls back to stop-start),
    or None when it can. On a Jetson the GPU shares this memory (unified), so MemAvailable is the gauge;
    tegrastats and the engine's device memory are not read (not exercised here)."""
    if meminfo_available_kb is None:
        return "the robot's available memory could not be read (/proc/meminfo)"
    available = meminfo_available_kb / 1024
    need = (running_mb or 0.0) + HANDOVER_HEADROOM_MB
    if available < need:
        return (
            f"only {available:.0f} MB available, below the running release's {running_mb or 0:.0f} MB "
            f"plus {HANDOVER_HEADROOM_MB} MB for a second release beside it"
        )
    return None


class RobotSwitch(RobotStore):
    """A robot's store, plus the switch edge-update.sh makes there and the gate that confirms it."""

    def __init__(self, conn: RobotConnection, retries: dict[str, int] | None = None) -> None:
        super().__init__(conn, retries)
        self.update: dict[str, str] = {}  # the strategy of the last switch (RobotResult.update)

    async def upload_update_script(self) -> None:
        """The robot runs the edge-update.sh of the tool that drives it (a newer tool may bring a newer one)."""
        await self.conn.write_file(
            f"{self.robot.compose_dir}/{UPDATE_SCRIPT}", (compose_bundle_dir() / UPDATE_SCRIPT).read_bytes()
        )

    async def wait_settled(self, txn: str, until: tuple[str, ...], timeout_s: float) -> dict[str, Any]:
        """Poll state.json until edge-update.sh's transaction ``txn`` reaches one of ``until``."""
        deadline = time.monotonic() + timeout_s
        started_by = time.monotonic() + 60 + self.robot.lock_wait_s  # it must show up by then
        while True:
            state = await self.read_state()
            if state.get("txn") == txn and state.get("last_result") in until:
                return state
            now = time.monotonic()
            if state.get("txn") != txn and now > started_by:
                log_tail = await self.conn.run(f"tail -n 5 {self.dir}/update.log 2>/dev/null", timeout=30)
                raise FleetError(
                    f"Robot {self.robot.name}: {UPDATE_SCRIPT} did not start ({log_tail.tail(200) or 'no log'})"
                )
            if now > deadline:
                raise FleetError(
                    f"Robot {self.robot.name}: the update did not finish within {timeout_s:.0f} s "
                    f"(state {state.get('last_result')!r}, step {state.get('step')!r})"
                )
            await asyncio.sleep(POLL_S)

    async def transaction(
        self,
        version: str,
        restore_to: str | None,
        state: dict[str, Any],
        gate: DeployRequest,
        timings: dict[str, float],
        mark_bad: bool = True,
    ) -> tuple[str, str, dict[str, Any]]:
        """Switch to ``version`` through edge-update.sh, started detached on the robot (``setsid nohup``):
        it switches, runs ``up --wait``, and waits for this side's health gate to confirm; a failed ``up``
        or gate, or no confirmation within ``gate.confirm_timeout_s``, restores ``restore_to`` there, even
        with this connection gone. Returns (result, reason, final state); the update lock must be held and
        is handed over to the script."""
        for v in (version, restore_to, state.get("current"), state.get("previous")):
            if v:
                release_dir_name(self.robot, v)
        txn = secrets.token_hex(6)
        wait_s = int(max(gate.health_timeout_s, 1))
        restore_s = int(max(gate.health_timeout_s, RESTORE_TIMEOUT_S))
        env = {
            "EDGE_TXN": txn,
            "EDGE_VERSION": version,
            "EDGE_RESTORE": restore_to or "-",
            "EDGE_WAS": state.get("current") or "-",
            "EDGE_WAS_PREVIOUS": state.get("previous") or "-",
            "EDGE_WAIT_S": str(wait_s),
            "EDGE_RESTORE_WAIT_S": str(restore_s),
            "EDGE_CONFIRM_S": str(int(max(gate.confirm_timeout_s, 1))),
            "EDGE_LOCK_WAIT_S": str(int(self.robot.lock_wait_s) + 1),
            "EDGE_MARK_BAD": "1" if mark_bad else "0",
            "EDGE_PORT": str(self.robot.service_port),
            "EDGE_HANDOVER_PORT": str(self.robot.gate_port),
            "EDGE_STRATEGY": await self.choose_strategy(gate),
        }
        await self.upload_update_script()
        assign = " ".join(f"{k}={q(v)}" for k, v in env.items())
        steps = Steps(timings)
        with steps("up"):
            await self.conn.check(
                f"cd {self.dir} && rm -f txn-*.confirm txn-*.revert txn-*.reason && "
                f"{{ {assign} setsid nohup sh ./{UPDATE_SCRIPT} apply >update.log 2>&1 </dev/null & }}",
                "starting the update on the robot",
                timeout=30,
            )
            await self.release_update_lock()  # edge-update.sh holds it from here on
            up = await self.wait_settled(txn, ("awaiting_confirm", *SETTLED), wait_s + restore_s + 120)
        timings["switch"] = 0.0  # edge-update.sh switches within "up"
        self.note_strategy(up)
        if up["last_result"] != "awaiting_confirm":  # up failed: the robot has restored on its own
            reason = (await self.conn.run(f"cat {self.dir}/txn-{txn}.reason 2>/dev/null", timeout=30)).stdout
            reason = reason.strip() or str(up.get("reason") or up["last_result"])
            timings["rollback"] = 0.0  # within "up" too
            return str(up["last_result"]), reason, up
        try:
            with steps("health"):
                await self.health_gate_after_up(gate, up)
        except GateFailed as exc:
            with steps("rollback"):
                await self.conn.write_file(
                    f"{self.robot.compose_dir}/txn-{txn}.revert", str(exc)[:600].encode()
                )
                done = await self.wait_settled(txn, SETTLED, restore_s + 120)
            if mark_bad:
                await self.mark_bad(version)
            return str(done["last_result"]), str(exc), done
        await self.conn.check(f": > {self.dir}/txn-{txn}.confirm", "confirming the update", timeout=30)
        done = await self.wait_settled(txn, SETTLED, restore_s + 120)
        self.note_strategy(done)
        reason = "" if done["last_result"] == "updated" else str(done.get("reason") or "")
        return str(done["last_result"]), reason, done

    async def choose_strategy(self, req: DeployRequest) -> str:
        """The operator's strategy, else the robot's; a hand-over needs the memory for two releases at once
        (``handover_memory_problem``), else it is a stop-start and ``self.update`` says why."""
        asked = req.update_strategy or self.robot.update_strategy
        if asked not in UPDATE_STRATEGIES:
            raise FleetError(f"Robot {self.robot.name}: unknown update strategy {asked!r}")
        self.update = {"strategy": asked}
        if asked != "hand-over":
            return asked
        # With ROS 2 on, the bridges hand over too (edge_runtime.ros2.bridge); edge-update.sh falls back when
        # the running or the new runtime is older than that (two bridges would answer one observation).
        r = await self.conn.run(
            "awk '/^MemAvailable:/ {print $2}' /proc/meminfo; "
            f"cid=$(docker ps -q {SERVICE_FILTER} | head -n1); "
            '[ -z "$cid" ] || docker stats --no-stream --format "{{.MemUsage}}" "$cid"',
            timeout=60,
        )
        lines = r.stdout.splitlines() if r.ok else []
        available = int(lines[0]) if lines and lines[0].strip().isdigit() else None
        running = parse_mem_usage(lines[1]) if len(lines) > 1 else None
        why = handover_memory_problem(available, running)
        if why is None:
            return asked
        self.update = {"strategy": "stop-start", "fallback": why}
        return "stop-start"

    def note_strategy(self, state: dict[str, Any]) -> None:
        """What edge-update.sh made of the strategy (it falls back when nothing runs to hand over from,
        an edge-runtime cannot listen beside the other, or, with ROS 2 on, a bridge cannot hand over)."""
        if state.get("strategy") in UPDATE_STRATEGIES and state.get("txn"):
            self.update["strategy"] = str(state["strategy"])
        if state.get("fallback"):
            self.update["fallback"] = str(state["fallback"])

    async def settle_pending(self, req: DeployRequest | None = None) -> dict[str, Any]:
        """Before a new update: an edge-update.sh still running is left to finish (one that waits for a
        confirmation of ``req``'s own version and image is gated and confirmed now, as a re-run of that
        rollout); a switch no live script owns any more (a reboot, a killed script) is undone with
        ``edge-update.sh recover``. Returns the robot's state afterwards."""
        state = await self.read_state()
        if state.get("last_result") not in PENDING:
            return state
        txn = str(state.get("txn") or "")
        pid = state.get("pid")
        alive = (
            isinstance(pid, int)
            and (
                await self.conn.run(f"grep -q {UPDATE_SCRIPT} /proc/{pid}/cmdline 2>/dev/null", timeout=30)
            ).ok
        )
        restore_s = RESTORE_TIMEOUT_S + 120
        if not alive or not txn.isalnum():
            await self.upload_update_script()
            await self.conn.run(
                f"cd {self.dir} && sh ./{UPDATE_SCRIPT} recover >>update.log 2>&1", timeout=restore_s
            )
            return await self.read_state()
        timeout = (req.health_timeout_s + req.confirm_timeout_s if req else 900.0) + restore_s
        state = await self.wait_settled(txn, ("awaiting_confirm", *SETTLED), timeout)
        if state["last_result"] != "awaiting_confirm":
            return state
        revert = "superseded by a rollback before it was confirmed"
        if req is not None and state.get("current") == req.version and state.get("image") == req.image:
            try:  # the re-run of the very rollout that lost its connection: gate it now
                await self.health_gate_after_up(req, state)
                await self.conn.check(
                    f": > {self.dir}/txn-{txn}.confirm", "confirming the update", timeout=30
                )
                revert = ""
            except GateFailed as exc:
                revert = str(exc)
        elif req is not None:
            revert = f"superseded by a rollout of {req.version} before it was confirmed"
        if revert:
            await self.conn.write_file(f"{self.robot.compose_dir}/txn-{txn}.revert", revert[:600].encode())
        return await self.wait_settled(txn, SETTLED, timeout)

    async def health_gate_after_up(self, req: DeployRequest, up: dict[str, Any] | None = None) -> GateReport:
        """The operator's gate once edge-update.sh has the release up: Docker's health check, then the
        service's own (``gate.service_check``); any failure to reach the service is a GateFailed. ``up``:
        the robot's state then; a hand-over names the port and project of the new release there, which is
        gated there while the old one still serves."""
        up = up or {}
        gate_port = up.get("gate_port") if up.get("strategy") == "hand-over" else None
        project = up.get("gate_project") if gate_port else None
        if gate_port is not None and not (isinstance(gate_port, int) and 1 <= gate_port <= 65535):
            raise GateFailed(f"the robot named a gate port that is not a port number ({gate_port!r})")
        if project is not None and project not in PROJECTS:
            raise GateFailed(f"the robot named an unknown compose project ({str(project)[:40]!r})")
        health = await self.container_health(project)
        if " healthy " not in f" {health} ":
            raise GateFailed(f"the container is not healthy ({health or 'no container'})")
        try:
            report = await service_check(
                self.conn,
                req.smoke,
                backend=expected_backend(self.robot, req.required_backend),
                port=gate_port,
            )
            if req.include_ros2:
                report["ros2"] = await ros2_check(self.conn, project=project)  # hand-over: the standby bridge
            return report
        except FleetError:
            raise
        except Exception as exc:  # connection refused, timeouts, SSH forward errors
            raise GateFailed(
                f"the service on port {self.robot.service_port} did not answer ({type(exc).__name__}: {exc})"
            ) from None
