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
#   sh edge-update.sh apply
#   sh edge-update.sh recover     # a switch left unconfirmed by a dead script (reboot): put the previous back
#   sh edge-update.sh cause       # why the service is not up, in the container's own words
#
# The operator asks by files: txn-<id>.confirm (the gate passed), txn-<id>.revert (it failed). The reason
# of a failed `up` (exit code and the container's own last log lines) goes to txn-<id>.reason.
set -u
cd "$(dirname "$0")" || exit 1
PROJECT=edge
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
        printf '  "updated": "%s"\n}\n' "$(now)"
    } >"$tmp" && mv -f "$tmp" state.json
}

history() { # ACTION VERSION TO RESULT REASON
    printf '{"at": "%s", "action": "%s", "version": %s, "to": %s, "result": "%s", "reason": "%s", "by": "robot", "txn": "%s"}\n' \
        "$(now)" "$1" "$(jv "$2")" "$(jv "$3")" "$4" "$(jstr "$5")" "$TXN" >>history.jsonl
}

switch_to() { ln -sfn "releases/$1" .current.tmp && mv -T .current.tmp current; }

up() { # WAIT_S: bring current up and wait for its health check; compose's own output to up.log
    (cd current && docker compose -p "$PROJECT" up -d --wait --wait-timeout "$1" --remove-orphans) >up.log 2>&1
}

# Why the service did not come up, in the container's own words: its state, exit code, restarts, the last
# health check's output and the last lines of its log (the crashing process's message).
cause() {
    cid=$(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT" \
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

restore() { # WHY RESULT: back to RESTORE (or nothing), state and history written here
    why=$1 result=$2 t0=$(date +%s)
    state "$VERSION" "$RESTORE" reverting restore "$why"
    if [ "$RESTORE" = "-" ]; then
        (cd current && docker compose -p "$PROJECT" down) >>up.log 2>&1
        rm -f current
        RESTORE_S=$(( $(date +%s) - t0 ))
        state - - failed done "$why; no previous release to restore, service stopped"
        history auto-rollback "$VERSION" - failed "$why"
        return
    fi
    switch_to "$RESTORE"
    up "$RESTORE_WAIT_S"
    ok=$?
    RESTORE_S=$(( $(date +%s) - t0 ))
    if [ "$ok" = 0 ]; then
        state "$RESTORE" - "$result" done "$why; restored $RESTORE"
        history auto-rollback "$VERSION" "$RESTORE" "$result" "$why"
    else
        state "$RESTORE" - failed done "$why; restoring $RESTORE also failed ($(cause))"
        history auto-rollback "$VERSION" "$RESTORE" failed "$why; restoring $RESTORE also failed"
    fi
}

apply() {
    for v in "$VERSION" "$RESTORE" "$WAS" "$WAS_PREVIOUS"; do
        semver_or_dash "$v" || { echo "edge-update: not a version: $v" >&2; exit 2; }
    done
    [ "$VERSION" != "-" ] && [ -d "releases/$VERSION" ] || { echo "edge-update: no release $VERSION" >&2; exit 2; }
    for n in "$WAIT_S" "$RESTORE_WAIT_S" "$CONFIRM_S" "$LOCK_WAIT_S"; do
        number "$n" || { echo "edge-update: not a whole number of seconds: $n" >&2; exit 2; }
    done
    # The robot's application and other updates hold the same lock; the operator released it just now.
    exec 9>>update.lock
    if ! flock -w "$LOCK_WAIT_S" 9; then
        state "$WAS" "$WAS_PREVIOUS" skipped lock "the robot's application held update.lock"
        exit 0
    fi
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
case "${1:-}" in
    apply) [ -n "$TXN" ] || { echo "edge-update: EDGE_TXN is not set" >&2; exit 2; }; apply ;;
    recover) recover ;;
    cause) cause; echo ;;
    *) echo "usage: edge-update.sh apply|recover|cause" >&2; exit 2 ;;
esac
