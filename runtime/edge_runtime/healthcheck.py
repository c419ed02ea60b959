"""Docker's health check of the local service: ``python3 -m edge_runtime.healthcheck [--live]``.

Docker starts it as a new process every second while a robot's service starts and every 15 s after that,
so it imports only ``http.client`` (not click, not urllib.request): about half the CPU of going through the
``edge-runtime`` command, which matters on a Jetson's cores and far more under QEMU. ``edge-runtime
healthcheck`` runs the same check for people. Exit 0 when GET /readyz (``--live``: /healthz) answers 200.
/readyz is 503 while the watchdog sees an inference past its deadline, so a hung engine fails this check
(and the service exits for its restart policy when it stays hung); a refusal's ``reason`` is printed, and
Docker keeps it in ``docker inspect``'s health log.
"""

from __future__ import annotations

import http.client
import os
import sys
from urllib.parse import urlsplit


def default_url() -> str | None:
    """Where to ask: the URL the service wrote to EDGE_HEALTH_URL_FILE when that is set (compose sets it;
    None until the service has written it), else EDGE_HEALTH_URL or EDGE_PORT on loopback.

    A release started beside the one it replaces (a hand-over, service/server.py) listens on its handover
    port until it takes the service address over: asking EDGE_PORT then would get the old release's
    answer, so the service names the port it answers on, and nothing counts as healthy before it has."""
    handover = os.environ.get("EDGE_HEALTH_URL_FILE")
    if handover:
        try:
            with open(handover, encoding="utf-8") as f:
                return f.read().strip() or None
        except OSError:
            return None
    return os.environ.get("EDGE_HEALTH_URL") or f"http://127.0.0.1:{os.environ.get('EDGE_PORT') or 8080}"


def check(url: str | None = None, timeout: float = 3.0, live: bool = False) -> tuple[bool, str]:
    """(ok, one line): the endpoint checked and its HTTP status, or why it could not be reached."""
    where = url or default_url()
    if where is None:
        return (
            False,
            f"the service has not written where it listens to {os.environ.get('EDGE_HEALTH_URL_FILE')} yet",
        )
    base = where.rstrip("/")
    target = base + ("/healthz" if live else "/readyz")
    parts = urlsplit(target)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False, f"{target}: not an http(s) URL"
    conn_type = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    try:
        conn = conn_type(parts.hostname, parts.port, timeout=timeout)
        try:
            conn.request("GET", parts.path or "/", headers={"Connection": "close"})
            response = conn.getresponse()
            status, body = response.status, response.read(4096)
        finally:
            conn.close()
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return False, f"{target}: unreachable ({exc})"
    return status == 200, f"{target}: HTTP {status}{_reason(body) if status != 200 else ''}"


def _reason(body: bytes) -> str:
    """``: <reason>`` from a JSON refusal that gives one, else nothing (json is imported only here: the
    healthy path stays on http.client alone)."""
    import json

    try:
        reason = json.loads(body).get("reason")
    except (ValueError, AttributeError):
        return ""
    return f": {reason}" if isinstance(reason, str) and reason else ""


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    unknown = [a for a in args if a != "--live"]
    if unknown:
        print(f"healthcheck: unknown argument {unknown[0]!r} (only --live).", file=sys.stderr)
        return 2
    ok, line = check(live="--live" in args)
    print(line, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
