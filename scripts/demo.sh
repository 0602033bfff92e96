#!/usr/bin/env bash
# The README's main command (scripts/setup.sh demo runs it after installing everything):
#
#   1. start engined with its own root (/var/lib/engine-demo, /run/engine-demo), or reuse
#      the one already running there;
#   2. start a docker-registry on 127.0.0.1 (a free port; storage under the demo root), or
#      reuse the one this script started before;
#   3. build a busybox test image locally, load it, tag it and push it with engctl;
#   4. remove it locally, pull it back from the registry with engctl;
#   5. run a container from it (--rm, attached) and a detached one (demo-web), then ps.
#
# Safe to run twice: the daemon and registry are reused, demo containers replaced.
# Both are left running at the end; the script prints how to stop them.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$HERE/.venv"
PY="$VENV/bin/python"
ROOT=${ENGINE_DEMO_ROOT:-/var/lib/engine-demo}
RUN_ROOT=${ENGINE_DEMO_RUN_ROOT:-/run/engine-demo}
SOCKET="$RUN_ROOT/engine.sock"
DAEMON_PID="$RUN_ROOT/engined.pid"
REG_DIR="$ROOT/registry"
REG_PID="$REG_DIR/registry.pid"
REG_PORT_FILE="$REG_DIR/port"
export ENGINE_HOST="unix://$SOCKET"

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
run() { printf '+ %s\n' "$*"; "$@"; }
die() { echo "demo: $*" >&2; exit 1; }
engctl() { "$VENV/bin/engctl" "$@"; }

[ "$(id -u)" = 0 ] || die "run as root (the engine mounts overlays and creates namespaces)"
[ -x "$PY" ] || die "no virtualenv at $VENV: run scripts/setup.sh install first"
command -v docker-registry >/dev/null || die "docker-registry is missing: run scripts/setup.sh install"

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local seconds=$1 what=$2; shift 2
    for _ in $(seq $((seconds * 10))); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    die "$what did not come up within ${seconds}s"
}

free_port() {
    "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

port_open() { "$PY" -c "import socket,sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 1)" "$1"; }

# --- 1. the daemon ---------------------------------------------------------------------------
start_daemon() {
    say "engine daemon (root $ROOT, run-root $RUN_ROOT)"
    if alive "$DAEMON_PID" && engctl version >/dev/null 2>&1; then
        echo "reusing engined pid $(cat "$DAEMON_PID")"
        return
    fi
    mkdir -p "$ROOT" "$RUN_ROOT" "$ROOT/etc"
    # Loopback registries speak plain HTTP here: trust 127.0.0.0/8, whatever port the
    # registry gets, so a reused daemon keeps working with a new registry.
    setsid "$VENV/bin/engined" --root "$ROOT" --run-root "$RUN_ROOT" \
        --config-dir "$ROOT/etc" --insecure-registry 127.0.0.0/8 \
        </dev/null >>"$ROOT/engined.log" 2>&1 &
    wait_for 30 "engined (log: $ROOT/engined.log)" engctl version
    echo "started engined pid $(cat "$DAEMON_PID"), log $ROOT/engined.log"
}

# --- 2. the registry -------------------------------------------------------------------------
start_registry() {
    say "local registry (docker-registry, storage $REG_DIR/storage)"
    if alive "$REG_PID" && [ -f "$REG_PORT_FILE" ] && port_open "$(cat "$REG_PORT_FILE")" 2>/dev/null; then
        PORT=$(cat "$REG_PORT_FILE")
        echo "reusing docker-registry pid $(cat "$REG_PID") on 127.0.0.1:$PORT"
        return
    fi
    if alive "$REG_PID"; then kill "$(cat "$REG_PID")"; fi
    mkdir -p "$REG_DIR/storage"
    PORT=$(free_port)
    cat >"$REG_DIR/config.yml" <<EOF
version: 0.1
log: {level: warn}
storage:
  filesystem: {rootdirectory: $REG_DIR/storage}
  delete: {enabled: true}
http: {addr: "127.0.0.1:$PORT"}
EOF
    OTEL_TRACES_EXPORTER=none setsid docker-registry serve "$REG_DIR/config.yml" \
        </dev/null >>"$REG_DIR/registry.log" 2>&1 &
    echo $! >"$REG_PID"
    echo "$PORT" >"$REG_PORT_FILE"
    wait_for 15 "docker-registry (log: $REG_DIR/registry.log)" port_open "$PORT"
    echo "started docker-registry pid $(cat "$REG_PID") on 127.0.0.1:$PORT"
}

# --- 3..5. the image's round trip and containers ---------------------------------------------
image_round_trip() {
    local local_name="localhost/demo/busybox:latest"
    IMAGE="127.0.0.1:$PORT/demo/busybox:latest"
    local layout="$ROOT/demo-image"

    say "build a busybox image locally (OCI layout in $layout)"
    rm -rf "$layout"
    run "$PY" -m engine.testing.images oci "$layout" --name "$local_name"

    say "load it, tag it for the registry and push it with engctl"
    run engctl load -i "$layout"
    run engctl tag "$local_name" "$IMAGE"
    run engctl push "$IMAGE"

    say "remove it locally, then pull it back from the registry"
    # a previous run's container holds the image (it is replaced below anyway), and a
    # previous run may have tagged it for another registry port: remove it by ID, every name
    engctl rm -f demo-web >/dev/null 2>&1 || true
    local image_id
    image_id=$(engctl image inspect -f '{{.Id}}' "$local_name")
    run engctl rmi -f "$image_id"
    run engctl images
    run engctl pull "$IMAGE"
    run engctl images --digests
}

run_containers() {
    say "run a container from the pulled image"
    run engctl run --rm "$IMAGE" echo "hello from a container pulled from 127.0.0.1:$PORT"

    say "run a detached one (demo-web) and list containers"
    run engctl run -d --name demo-web "$IMAGE" \
        sh -c 'mkdir -p /www && echo "hello from demo-web" >/www/index.html && exec httpd -f -p 8080 -h /www'
    run engctl ps
}

start_daemon
start_registry
image_round_trip
run_containers

say "done: engined and the registry keep running"
cat <<EOF
  export ENGINE_HOST=$ENGINE_HOST
  $VENV/bin/engctl ps                    # the demo-web container
  $VENV/bin/engctl images                # the pulled image
Stop everything:
  $VENV/bin/engctl rm -f demo-web
  kill \$(cat $DAEMON_PID)       # engined (containers would survive it: live-restore)
  kill \$(cat $REG_PID)   # docker-registry on 127.0.0.1:$PORT
EOF
