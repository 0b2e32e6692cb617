#!/usr/bin/env bash
# Start a Docker engine suited to this sandbox (no systemd, no iptables, no bridge network) if none answers.
#
#   scripts/start_dockerd.sh            # installs docker.io if missing, starts dockerd, waits until it answers
#
# Containers (and `docker build`) then need `--network host`.
# Env: DOCKER_STORAGE_DRIVER  auto (default: overlay2 when the kernel lets us mount overlayfs here, else vfs),
#                             or a driver name (vfs works everywhere but copies every layer in full: slow, disk-hungry)
#      DOCKERD_LOG (/var/log/dockerd.log), DOCKERD_EXTRA_ARGS, DOCKER_START_TIMEOUT (seconds, 60).
# On a host whose Docker already answers this script only checks `docker info`.
set -euo pipefail

DOCKERD_LOG=${DOCKERD_LOG:-/var/log/dockerd.log}
DOCKER_STORAGE_DRIVER=${DOCKER_STORAGE_DRIVER:-auto}
DOCKER_START_TIMEOUT=${DOCKER_START_TIMEOUT:-60}
DATA_ROOT=/var/lib/docker
PID_FILE=/var/run/dockerd-sandbox.pid

log() { echo "[start_dockerd] $*" >&2; }

if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; then
    log "installing docker.io from the Debian archive"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends docker.io >/dev/null
fi

if docker info >/dev/null 2>&1; then
    log "docker engine already answers ($(docker info -f '{{.Driver}}' 2>/dev/null) storage)"
    exit 0
fi

overlay_works() {
    local d
    mkdir -p "$DATA_ROOT"
    d=$(mktemp -d "$DATA_ROOT/.overlay-probe.XXXXXX") || return 1
    mkdir -p "$d"/{lower,upper,work,merged}
    local ok=1
    if mount -t overlay overlay -o "lowerdir=$d/lower,upperdir=$d/upper,workdir=$d/work" "$d/merged" 2>/dev/null; then
        umount "$d/merged" && ok=0
    fi
    rm -rf "$d"
    return $ok
}

driver=$DOCKER_STORAGE_DRIVER
if [[ "$driver" == auto ]]; then
    if overlay_works; then driver=overlay2; else driver=vfs; fi
fi

start() {  # $1 storage driver; 0 when the engine answers
    log "starting dockerd (storage $1, no iptables, no bridge; log: $DOCKERD_LOG)"
    # shellcheck disable=SC2086
    nohup dockerd --storage-driver="$1" --iptables=false --bridge=none ${DOCKERD_EXTRA_ARGS:-} \
        >>"$DOCKERD_LOG" 2>&1 </dev/null &
    echo $! > "$PID_FILE"
    for _ in $(seq 1 "$DOCKER_START_TIMEOUT"); do
        if docker info >/dev/null 2>&1; then
            log "docker engine up (pid $(cat "$PID_FILE"), storage $(docker info -f '{{.Driver}}'))"
            return 0
        fi
        kill -0 "$(cat "$PID_FILE")" 2>/dev/null || return 1
        sleep 1
    done
    return 1
}

if start "$driver"; then exit 0; fi
if [[ "$DOCKER_STORAGE_DRIVER" == auto && "$driver" != vfs ]]; then
    kill "$(cat "$PID_FILE")" 2>/dev/null || true
    sleep 2
    log "dockerd failed with $driver; falling back to vfs"
    if start vfs; then exit 0; fi
fi
log "dockerd did not come up; last log lines:"
tail -n 30 "$DOCKERD_LOG" >&2 || true
exit 1
