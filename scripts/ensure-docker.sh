#!/usr/bin/env bash
# Make sure a Docker Engine answers on this machine (idempotent; run as root).
#
#  - If `docker info` already answers: exit 0, do nothing.
#  - Otherwise install the missing Debian packages (docker.io iptables debootstrap;
#    `apt-get update` only when something must be installed), start dockerd in the
#    background with overlay2 (log: /var/log/dockerd-jobgrid.log) and wait up to 60 s;
#    if overlay2 does not come up, kill that daemon and retry with vfs.
#  - Also makes sure a compose tool exists (docker compose v2 plugin, else docker-compose v1),
#    installing the first Debian package that has a candidate; warns (never fails) if none.
# Prints one line saying what it did; exits non-zero with a clear message if it can't.
set -u

LOG=/var/log/dockerd-jobgrid.log
WAIT_SECONDS=${JOBGRID_DOCKER_WAIT:-60}
PKGS=(docker.io iptables debootstrap iproute2)  # iproute2: the swarm test routes the overlay through its gateway

die() { echo "ensure-docker: ERROR: $*" >&2; exit 1; }

docker_answers() { command -v docker >/dev/null 2>&1 && timeout 10 docker info >/dev/null 2>&1; }

# A compose tool for compose/docker-compose.yml (tests/docker/test_compose.py): the v2 plugin
# if Debian has one, else docker-compose (v1). Never fatal: without one, that test fails clearly.
compose_answers() {
    { command -v docker >/dev/null 2>&1 && timeout 10 docker compose version >/dev/null 2>&1; } \
        || command -v docker-compose >/dev/null 2>&1
}
ensure_compose() {
    compose_answers && return 0
    if [ "$(id -u)" -ne 0 ]; then
        echo "ensure-docker: WARNING: no compose tool and not root; tests/docker/test_compose.py will fail" >&2
        return 0
    fi
    export DEBIAN_FRONTEND=noninteractive
    local pkg cand
    for attempt in cached updated; do
        [ "$attempt" = updated ] && { apt-get update -qq >/dev/null 2>&1 || break; }
        for pkg in docker-compose-v2 docker-compose-plugin docker-compose; do
            cand=$(apt-cache policy "$pkg" 2>/dev/null | awk '/Candidate:/ {print $2}')
            if [ -n "$cand" ] && [ "$cand" != "(none)" ]; then
                if apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null 2>&1 && compose_answers; then
                    echo "ensure-docker: installed compose tool ($pkg $cand)"
                    return 0
                fi
            fi
        done
    done
    echo "ensure-docker: WARNING: no compose package (docker-compose-v2, docker-compose-plugin," \
         "docker-compose) could be installed; tests/docker/test_compose.py will fail" >&2
    return 0
}

if docker_answers; then
    ensure_compose
    drv=$(docker info --format '{{.Driver}}' 2>/dev/null || echo '?')
    echo "ensure-docker: Docker Engine already running (storage driver: $drv); nothing to do"
    exit 0
fi

[ "$(id -u)" -eq 0 ] || die "Docker Engine is not running and starting it needs root (run: sudo $0)"

# --- packages -------------------------------------------------------------
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
# docker.io may be absent as a package while a docker binary was installed otherwise.
if [ ${#missing[@]} -gt 0 ] && [ "${missing[*]}" = "docker.io" ] && command -v dockerd >/dev/null 2>&1; then
    missing=()
fi
installed_msg=""
if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null 2>&1 || die "apt-get update failed (is a Debian mirror reachable?)"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
        || die "apt-get install ${missing[*]} failed"
    installed_msg="installed ${missing[*]}; "
fi
command -v dockerd >/dev/null 2>&1 || die "dockerd not found even after installing docker.io"

# --- daemon ---------------------------------------------------------------
start_dockerd() {  # $1 = storage driver; echoes the pid
    local driver=$1
    echo "=== $(date -Is) ensure-docker: starting dockerd --storage-driver=$driver ===" >>"$LOG"
    setsid nohup dockerd --storage-driver="$driver" >>"$LOG" 2>&1 </dev/null &
    echo $!
}

wait_for_docker() {  # $1 = pid; returns 0 when docker info answers
    local pid=$1 i
    for ((i = 0; i < WAIT_SECONDS; i++)); do
        docker_answers && return 0
        if ! kill -0 "$pid" 2>/dev/null; then
            # setsid may have forked: follow dockerd's own pid file before giving up
            local dpid
            dpid=$(cat /var/run/docker.pid 2>/dev/null || true)
            if [ -n "$dpid" ] && kill -0 "$dpid" 2>/dev/null; then pid=$dpid; else return 1; fi
        fi
        sleep 1
    done
    return 1
}

stop_dockerd() {  # $1 = pid
    local pid=$1 i
    kill "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 20; i++)); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null
    sleep 1
}

# A stale pid file from a dead daemon makes dockerd refuse to start.
if [ -f /var/run/docker.pid ] && ! kill -0 "$(cat /var/run/docker.pid 2>/dev/null)" 2>/dev/null; then
    rm -f /var/run/docker.pid
fi

for driver in overlay2 vfs; do
    pid=$(start_dockerd "$driver")
    if wait_for_docker "$pid"; then
        ensure_compose
        echo "ensure-docker: ${installed_msg}started dockerd (pid $pid, storage driver $driver, log $LOG)"
        exit 0
    fi
    echo "ensure-docker: dockerd with $driver did not answer within ${WAIT_SECONDS}s; see $LOG" >&2
    stop_dockerd "$pid"
done
die "could not start Docker Engine with overlay2 nor vfs; last lines of $LOG:
$(tail -n 20 "$LOG" 2>/dev/null)"
