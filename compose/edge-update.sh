#!/bin/sh
# edge-update.sh: one release switch, owned by the robot. `edge-deploy rollout` and `rollback` upload it
# next to releases/ and start it detached (setsid nohup), so the switch, `up --wait`, and the restore run to
# the end here even when the operator's SSH connection dies. It writes its progress to state.json; the
# operator polls that, runs its health gate (readiness, smoke inference, backend) once the new release is up,
# and confirms it. No confirmation within EDGE_CONFIRM_S (a dropped connection, a killed tool) means
# "revert", like a display-settings dialog: the robot puts its previous release back on its own.
#
#   EDGE_TXN=<hex> EDGE_VERSION=<semver> EDGE_RESTORE=<semver|-> EDGE_WAS=<semver|-> EDGE_WAS_PREVIOUS=<semver|->
#   EDGE_WAIT_S=<s> EDGE_RESTORE_WAIT_S=<s> EDGE_CONFIRM_S=<s> EDGE_LOCK_WAIT_S=<s> EDGE_MARK_BAD=<0|1>
#   EDGE_STRATEGY=<stop-start|hand-over> EDGE_PORT=<port> EDGE_HANDOVER_PORT=<port>
#   sh edge-update.sh apply
#   sh edge-update.sh recover     # a switch left unconfirmed by a dead script (reboot): put the previous back
#   sh edge-update.sh cause       # why the service is not up, in the container's own words
#
# The operator asks by files: txn-<id>.confirm (the gate passed), txn-<id>.revert (it failed). The reason
# of a failed `up` (exit code and the container's own last log lines) goes to txn-<id>.reason.
#
# Update strategies (docs/fleet.md, "Update strategies"). stop-start: `current` moves, compose replaces the
# running container (the service is down from its stop until the new one is healthy). hand-over: the new
# release starts beside the running one as the other compose project (edge / edge-b; the engine-cache volume
# is shared), listening on EDGE_HANDOVER_PORT only, where the operator gates it; once confirmed it is told
# (SIGUSR1) to listen on the service port too (SO_REUSEPORT), and only then does `current` move and the
# old project stop (SIGTERM: it drains). A failed `up` or gate stops the new project: the old never
# stopped. With ROS 2 on, the new release's bridge stays in standby until SIGUSR1 and the two bridges split
# the observations at the takeover instant (docs/ros2.md, "Hand-over"); a runtime older than that on either
# side makes it a stop-start, with the reason in state.json. A release's project is COMPOSE_PROJECT_NAME in its .env, so `docker compose up -d` in current/
# (the systemd unit) brings up the release that runs, in the project it runs as.
set -u
cd "$(dirname "$0")" || exit 1
PROJECT=edge
OTHER_PROJECT=edge-b
SERVICE=edge-runtime

now() { date -u +%Y-%m-%dT%H:%M:%S+00:00; }
# Printable ASCII only, quotes and backslashes escaped: safe inside a JSON string.
jstr() { printf '%s' "$1" | tr '\n\t\r' '   ' | LC_ALL=C tr -cd '\040-\176' | sed 's/\\/\\\\/g; s/"/\\"/g'; }
jv() { if [ "$1" = "-" ] || [ -z "$1" ]; then printf 'null'; else printf '"%s"' "$(jstr "$1")"; fi; }
semver_or_dash() {
    case "$1" in
        -) return 0 ;;
        *[!0-9A-Za-z.+-]*|'') return 1 ;;
        [0-9]*) return 0 ;;
    esac
    return 1
}
number() { case "$1" in ''|*[!0-9]*) return 1 ;; esac; }
image_of() { [ "$1" = "-" ] && return 0; sed -n 's/^EDGE_IMAGE=//p' "releases/$1/.env" 2>/dev/null | head -n1; }

# state CURRENT PREVIOUS RESULT STEP [REASON]: state.json in one rename, so a reader never sees half of it.
state() {
    tmp="state.json.$$.tmp"
    {
        printf '{\n  "current": %s,\n  "previous": %s,\n  "image": %s,\n' "$(jv "$1")" "$(jv "$2")" "$(jv "$(image_of "$1")")"
        printf '  "last_result": "%s",\n  "step": "%s",\n  "txn": "%s",\n  "pid": %s,\n' "$3" "$4" "$TXN" "$$"
        if [ -n "${5:-}" ]; then printf '  "reason": "%s",\n' "$(jstr "$5")"; fi
        if [ -n "${BAD:-}" ]; then printf '  "bad": "%s",\n' "$BAD"; fi
        if [ -n "${RESTORE_S:-}" ]; then printf '  "restore_s": %s,\n' "$RESTORE_S"; fi
        printf '  "strategy": "%s",\n' "${STRATEGY_USED:-stop-start}"
        if [ -n "${FALLBACK:-}" ]; then printf '  "fallback": "%s",\n' "$(jstr "$FALLBACK")"; fi
        if [ -n "${NEWP:-}" ]; then printf '  "gate_port": %s,\n  "gate_project": "%s",\n' "$HANDOVER_PORT" "$NEWP"; fi
        printf '  "updated": "%s"\n}\n' "$(now)"
    } >"$tmp" && mv -f "$tmp" state.json
}

history() { # ACTION VERSION TO RESULT REASON
    printf '{"at": "%s", "action": "%s", "version": %s, "to": %s, "result": "%s", "reason": "%s", "by": "robot", "txn": "%s"}\n' \
        "$(now)" "$1" "$(jv "$2")" "$(jv "$3")" "$4" "$(jstr "$5")" "$TXN" >>history.jsonl
}

switch_to() { ln -sfn "releases/$1" .current.tmp && mv -T .current.tmp current; }

# Whether a release's edge-runtime hands its ROS 2 bridge over (standby until SIGUSR1, edge_runtime.ros2.bridge):
# its BRIDGE_HANDOVER marker, read from the installed source without importing anything (cheap under QEMU).
BRIDGE_CHECK='import importlib.util as u, pathlib, sys; s = u.find_spec("edge_runtime"); sys.exit(0 if s and s.origin and "BRIDGE_HANDOVER = " in (pathlib.Path(s.origin).parent / "ros2" / "bridge.py").read_text() else 3)'
ros2_on() { grep -qx 'EDGE_ROS2=1' "releases/$1/.env" 2>/dev/null; }
bridge_hands_over() { # run VERSION (its image, not started) | exec PROJECT (its running container)
    if [ "$1" = run ]; then
        img=$(image_of "$2")
        plat=$(sed -n 's/^EDGE_PLATFORM=//p' "releases/$2/.env" 2>/dev/null | head -n1)
        case "${plat:=linux/arm64}" in *[!a-z0-9/._-]*) return 1 ;; esac # as compose.yaml's platform
        [ -n "$img" ] && docker run --rm --pull never --platform "$plat" --network none --entrypoint python3 \
            "$img" -c "$BRIDGE_CHECK" >/dev/null 2>&1
    else
        cid=$(docker ps -q --filter "label=com.docker.compose.project=$2" --filter "label=com.docker.compose.service=$SERVICE" 2>/dev/null | head -n1)
        [ -n "$cid" ] && docker exec "$cid" python3 -c "$BRIDGE_CHECK" >/dev/null 2>&1
    fi
}

# The compose project a release runs as (its .env's COMPOSE_PROJECT_NAME): edge or edge-b.
project_of() {
    p=$(sed -n 's/^COMPOSE_PROJECT_NAME=//p' "releases/$1/.env" 2>/dev/null | tail -n1)
    case "$p" in "$OTHER_PROJECT") echo "$OTHER_PROJECT" ;; *) echo "$PROJECT" ;; esac
}
set_project() { # VERSION PROJECT
    f="releases/$1/.env"
    [ -f "$f" ] || return 0
    { grep -v '^COMPOSE_PROJECT_NAME=' "$f"; echo "COMPOSE_PROJECT_NAME=$2"; } >"$f.tmp" && mv -f "$f.tmp" "$f"
}
other_project() { if [ "$1" = "$PROJECT" ]; then echo "$OTHER_PROJECT"; else echo "$PROJECT"; fi; }
# The project whose service container runs now (none: empty).
running_project() {
    p=$(docker ps --filter "label=com.docker.compose.service=$SERVICE" --filter label=com.docker.compose.oneoff=False \
        --format '{{.Label "com.docker.compose.project"}}' 2>/dev/null | head -n1)
    case "$p" in "$PROJECT"|"$OTHER_PROJECT") echo "$p" ;; esac
}
down_project() { docker compose -p "$1" down --timeout 30 >>up.log 2>&1; }
# Whether anything listens on TCP port $1 in this network namespace (the robot's: host networking).
listening() {
    hex=$(printf ':%04X' "$1")
    cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | awk -v p="$hex" '$4 == "0A" && substr($2, length($2) - 4) == p { f = 1 } END { exit !f }'
}

up() { # WAIT_S: bring current up in its project and wait for its health check (compose's output to up.log);
    # the other project, a release it replaces or one a dead switch left, is stopped and removed.
    cp=$(project_of "$(basename "$(readlink current)")")
    (cd current && docker compose -p "$cp" up -d --wait --wait-timeout "$1" --remove-orphans) >up.log 2>&1
    rc=$?
    down_project "$(other_project "$cp")"
    return $rc
}

# Why the service did not come up, in the container's own words: its state, exit code, restarts, the last
# health check's output and the last lines of its log (the crashing process's message).
cause() { # [PROJECT]
    cid=$(docker ps -aq --filter "label=com.docker.compose.project=${1:-$(project_of "$(basename "$(readlink current)")")}" \
        --filter "label=com.docker.compose.service=$SERVICE" 2>/dev/null | head -n1)
    if [ -z "$cid" ]; then
        printf 'no container started: %s' "$(tail -n 3 up.log 2>/dev/null | tr '\n' ' ' | cut -c1-300)"
        return
    fi
    set -- $(docker inspect -f '{{.State.Status}} {{.State.ExitCode}} {{.RestartCount}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$cid" 2>/dev/null)
    status=${1:-unknown} code=${2:-?} restarts=${3:-0} health=${4:-none}
    logs=$(docker logs --tail 5 "$cid" 2>&1 | tail -n 5 | cut -c1-200 | sed 's/$/ |/' | tr '\n' ' ' | sed 's/ | *$//')
    if [ "$status" = "running" ] && [ "$code" = "0" ]; then
        probe=$(docker inspect -f '{{if .State.Health}}{{range .State.Health.Log}}{{.ExitCode}}: {{.Output}}{{"\n"}}{{end}}{{end}}' "$cid" 2>/dev/null | sed '/^$/d' | tail -n1 | cut -c1-200)
        printf 'the container is running but %s (last health check: %s); its log ends: %s' \
            "$([ "$health" = starting ] && echo 'never turned healthy' || echo "is $health")" "${probe:-none}" "${logs:-nothing}"
    else
        printf 'the container %s with exit code %s (restarted %s times); its log ends: %s' \
            "$([ "$status" = restarting ] && echo 'keeps exiting' || echo "is $status")" "$code" "$restarts" "${logs:-nothing}"
    fi
}

restore() { # WHY RESULT: back to RESTORE (or nothing); history, then state (what a poller waits for)
    why=$1 result=$2 t0=$(date +%s)
    state "$VERSION" "$RESTORE" reverting restore "$why"
    failed_in=$(project_of "$VERSION")
    if [ "$RESTORE" = "-" ]; then
        down_project "$failed_in"
        rm -f current
        RESTORE_S=$(( $(date +%s) - t0 ))
        history auto-rollback "$VERSION" - failed "$why"
        state - - failed done "$why; no previous release to restore, service stopped"
        return
    fi
    # Stop-start: the failed container ran in RESTORE's project and is replaced in place. A hand-over that
    # died (recover): RESTORE still runs in its own project and stays as it is; the other one goes.
    rp=$(project_of "$RESTORE")
    if [ "$rp" = "$failed_in" ] || [ -z "$(docker ps -q --filter "label=com.docker.compose.project=$rp" \
        --filter "label=com.docker.compose.service=$SERVICE" 2>/dev/null)" ]; then
        set_project "$RESTORE" "$failed_in"
    fi
    switch_to "$RESTORE"
    up "$RESTORE_WAIT_S"
    ok=$?
    RESTORE_S=$(( $(date +%s) - t0 ))
    if [ "$ok" = 0 ]; then
        history auto-rollback "$VERSION" "$RESTORE" "$result" "$why"
        state "$RESTORE" - "$result" done "$why; restored $RESTORE"
    else
        history auto-rollback "$VERSION" "$RESTORE" failed "$why; restoring $RESTORE also failed"
        state "$RESTORE" - failed done "$why; restoring $RESTORE also failed ($(cause))"
    fi
}

# hand-over: the new release beside the running one, gated on its own port, then given the service port.
# Returns 1 (nothing changed, FALLBACK says why) when it must be done by stop-start instead.
hand_over() {
    NEWP=$(other_project "$OLDP")
    down_project "$NEWP" # a leftover of a switch that died (the running project is the other one)
    set_project "$VERSION" "$NEWP"
    STRATEGY_USED=hand-over
    state "$VERSION" "$RESTORE" switching up
    # While it loads and is gated, the new release gets a small CPU weight, so that on a busy board the
    # release that serves keeps its cores (weights matter only under contention); full weight at takeover.
    # `docker update` leaves compose's config hash alone: `up -d` later recreates nothing.
    (cd "releases/$VERSION" && docker compose -p "$NEWP" create) >up.log 2>&1
    nc=$(docker ps -aq --filter "label=com.docker.compose.project=$NEWP" --filter "label=com.docker.compose.service=$SERVICE" | head -n1)
    [ -n "$nc" ] && docker update --cpu-shares "$GATE_CPU_SHARES" "$nc" >>up.log 2>&1
    if ! (cd "releases/$VERSION" && docker compose -p "$NEWP" up -d --wait --wait-timeout "$WAIT_S") >>up.log 2>&1; then
        nc=$(docker ps -aq --filter "label=com.docker.compose.project=$NEWP" --filter "label=com.docker.compose.service=$SERVICE" | head -n1)
        if [ -n "$nc" ] && docker logs --tail 20 "$nc" 2>&1 | grep -qi 'address already in use'; then
            # An edge-runtime older than hand-over binds the service port alone: no fault of the release.
            down_project "$NEWP"
            STRATEGY_USED=stop-start NEWP=
            FALLBACK="the edge-runtime of $VERSION cannot listen beside the running one (older than hand-over)"
            return 1
        fi
        if [ "$MARK_BAD" = 1 ]; then
            grep -qx "$VERSION" bad-versions 2>/dev/null || echo "$VERSION" >>bad-versions
            BAD=$VERSION
        fi
        why="$(cause "$NEWP")"
        printf '%s\n' "$why" >"txn-$TXN.reason"
        keep_old "$why" rolled_back
        return 0
    fi
    state "$VERSION" "$RESTORE" awaiting_confirm gate
    deadline=$(( $(date +%s) + CONFIRM_S ))
    while :; do
        if [ -e "txn-$TXN.confirm" ]; then break; fi
        if [ -e "txn-$TXN.revert" ]; then
            BAD=$( [ "$MARK_BAD" = 1 ] && echo "$VERSION" || true)
            keep_old "$(head -c 600 "txn-$TXN.revert")" rolled_back
            return 0
        fi
        if [ "$(date +%s)" -ge "$deadline" ]; then
            keep_old "no confirmation from the operator within $CONFIRM_S s after $VERSION came up (the health gate did not finish)" reverted
            return 0
        fi
        sleep 0.2
    done
    state "$VERSION" "$RESTORE" switching takeover
    cid=$(docker ps -q --filter "label=com.docker.compose.project=$NEWP" --filter "label=com.docker.compose.service=$SERVICE" | head -n1)
    [ -n "$cid" ] && docker kill -s USR1 "$cid" >/dev/null 2>&1
    # It closes the handover port once it listens on the service port (edge_runtime.service.server).
    tries=0
    while listening "$HANDOVER_PORT" && [ "$tries" -lt 2600 ]; do
        sleep 0.05
        tries=$((tries + 1))
        if [ "$tries" = 60 ] && listening "$HANDOVER_PORT"; then
            # The running release holds the port alone (an edge-runtime older than hand-over): it must go
            # first, and the new one binds the port as soon as it is free.
            FALLBACK="the running release does not share port $SERVICE_PORT (older than hand-over): stopped before the takeover"
            down_project "$OLDP"
        fi
    done
    if listening "$HANDOVER_PORT"; then
        keep_old "$VERSION did not take over port $SERVICE_PORT within 130 s" rolled_back
        return 0
    fi
    [ -n "$cid" ] && docker update --cpu-shares 1024 "$cid" >>up.log 2>&1
    switch_to "$VERSION"
    down_project "$OLDP" # SIGTERM: it stops accepting and drains what it has in flight
    state "$VERSION" "$RESTORE" updated done
    return 0
}

# A hand-over that did not happen: the new project goes, the running release never stopped.
keep_old() { # WHY RESULT
    down_project "$NEWP"
    RESTORE_S=0
    history auto-rollback "$VERSION" "$WAS" "$2" "$1"
    state "$WAS" "$WAS_PREVIOUS" "$2" done "$1; $WAS kept serving"
}

apply() {
    for v in "$VERSION" "$RESTORE" "$WAS" "$WAS_PREVIOUS"; do
        semver_or_dash "$v" || { echo "edge-update: not a version: $v" >&2; exit 2; }
    done
    [ "$VERSION" != "-" ] && [ -d "releases/$VERSION" ] || { echo "edge-update: no release $VERSION" >&2; exit 2; }
    for n in "$WAIT_S" "$RESTORE_WAIT_S" "$CONFIRM_S" "$LOCK_WAIT_S"; do
        number "$n" || { echo "edge-update: not a whole number of seconds: $n" >&2; exit 2; }
    done
    case "$STRATEGY" in stop-start|hand-over) ;; *) echo "edge-update: unknown strategy: $STRATEGY" >&2; exit 2 ;; esac
    number "$SERVICE_PORT" && number "$HANDOVER_PORT" || { echo "edge-update: not a port number" >&2; exit 2; }
    # The robot's application and other updates hold the same lock; the operator released it just now.
    exec 9>>update.lock
    if ! flock -w "$LOCK_WAIT_S" 9; then
        state "$WAS" "$WAS_PREVIOUS" skipped lock "the robot's application held update.lock"
        exit 0
    fi
    OLDP=$(running_project)
    if [ "$STRATEGY" = hand-over ]; then
        if [ -z "$OLDP" ]; then
            FALLBACK="no release runs to hand over from"
        elif [ "$VERSION" = "$WAS" ]; then
            FALLBACK="$VERSION is the running release's own version (its files were replaced)"
        elif ! grep -q EDGE_HANDOVER_PORT "releases/$VERSION/compose.yaml" 2>/dev/null; then
            FALLBACK="the compose files of $VERSION are older than hand-over"
        elif ros2_on "$VERSION" && ! bridge_hands_over run "$VERSION"; then
            FALLBACK="the ROS 2 bridge of $VERSION's edge-runtime cannot hand over (older than bridge hand-over: two bridges would answer one observation)"
        elif ros2_on "$VERSION" && ros2_on "$WAS" && ! bridge_hands_over exec "$OLDP"; then
            FALLBACK="the running release's ROS 2 bridge cannot hand over (an edge-runtime older than bridge hand-over: two bridges would answer one observation)"
        elif listening "$HANDOVER_PORT"; then
            FALLBACK="port $HANDOVER_PORT, for the hand-over, is taken"
        elif hand_over; then
            exit 0
        fi
    fi
    set_project "$VERSION" "${OLDP:-$PROJECT}" # compose replaces the running container in place
    state "$VERSION" "$RESTORE" switching switch
    switch_to "$VERSION" || { restore "switching to $VERSION failed" failed; exit 1; }
    state "$VERSION" "$RESTORE" switching up
    if ! up "$WAIT_S"; then
        if [ "$MARK_BAD" = 1 ]; then
            grep -qx "$VERSION" bad-versions 2>/dev/null || echo "$VERSION" >>bad-versions
            BAD=$VERSION
        fi
        why="$(cause)"
        printf '%s\n' "$why" >"txn-$TXN.reason"
        restore "$why" rolled_back
        exit 0
    fi
    state "$VERSION" "$RESTORE" awaiting_confirm gate
    deadline=$(( $(date +%s) + CONFIRM_S ))
    while :; do
        if [ -e "txn-$TXN.confirm" ]; then
            state "$VERSION" "$RESTORE" updated done
            exit 0
        fi
        if [ -e "txn-$TXN.revert" ]; then
            BAD=$( [ "$MARK_BAD" = 1 ] && echo "$VERSION" || true)
            restore "$(head -c 600 "txn-$TXN.revert")" rolled_back
            exit 0
        fi
        if [ "$(date +%s)" -ge "$deadline" ]; then
            restore "no confirmation from the operator within $CONFIRM_S s after $VERSION came up (the health gate did not finish)" reverted
            exit 0
        fi
        sleep 1
    done
}

# A switch that no live edge-update.sh owns any more (the robot rebooted, the script was killed): put the
# release recorded as previous back, as the confirm timer would have.
recover() {
    [ -f state.json ] || exit 0
    grep -Eq '"last_result": "(switching|awaiting_confirm|reverting)"' state.json || exit 0
    pid=$(sed -n 's/^  "pid": \([0-9][0-9]*\),*$/\1/p' state.json)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && grep -q edge-update "/proc/$pid/cmdline" 2>/dev/null; then
        exit 0 # still running: it finishes on its own
    fi
    TXN=$(sed -n 's/^  "txn": "\([0-9a-f]*\)",*$/\1/p' state.json)
    VERSION=$(sed -n 's/^  "current": "\([^"]*\)",*$/\1/p' state.json)
    RESTORE=$(sed -n 's/^  "previous": "\([^"]*\)",*$/\1/p' state.json)
    VERSION=${VERSION:--} RESTORE=${RESTORE:--} RESTORE_WAIT_S=${EDGE_RESTORE_WAIT_S:-300}
    semver_or_dash "$VERSION" && semver_or_dash "$RESTORE" || exit 2
    restore "the update to $VERSION was interrupted before it was confirmed (edge-update.sh did not finish)" reverted
}

TXN=${EDGE_TXN:-}
case "$TXN" in *[!0-9a-f]*) echo "edge-update: bad transaction id" >&2; exit 2 ;; esac
VERSION=${EDGE_VERSION:--} RESTORE=${EDGE_RESTORE:--} WAS=${EDGE_WAS:--} WAS_PREVIOUS=${EDGE_WAS_PREVIOUS:--}
WAIT_S=${EDGE_WAIT_S:-600} RESTORE_WAIT_S=${EDGE_RESTORE_WAIT_S:-300} CONFIRM_S=${EDGE_CONFIRM_S:-300}
LOCK_WAIT_S=${EDGE_LOCK_WAIT_S:-30} MARK_BAD=${EDGE_MARK_BAD:-1} BAD= RESTORE_S=
STRATEGY=${EDGE_STRATEGY:-stop-start} SERVICE_PORT=${EDGE_PORT:-8080} HANDOVER_PORT=${EDGE_HANDOVER_PORT:-9080}
STRATEGY_USED=stop-start FALLBACK= OLDP= NEWP= GATE_CPU_SHARES=128
case "${1:-}" in
    apply) [ -n "$TXN" ] || { echo "edge-update: EDGE_TXN is not set" >&2; exit 2; }; apply ;;
    recover) recover ;;
    cause) cause; echo ;;
    *) echo "usage: edge-update.sh apply|recover|cause" >&2; exit 2 ;;
esac
