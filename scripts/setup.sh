#!/usr/bin/env bash
# Set up engine on a fresh Debian 12 machine (as root) and run the main job or the tests.
#
#   scripts/setup.sh demo    install everything, start a daemon and a local registry, push a
#                            locally built image, pull it and run a container from it
#   scripts/setup.sh test    install everything and run the whole test suite
#   scripts/setup.sh install only install (apt packages, .venv, host preparation)
#
# Safe to run twice: every step checks before it changes anything.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$HERE/.venv"
APT_PACKAGES=(
    runc crun conmon containernetworking-plugins iptables iproute2 util-linux
    golang-github-containers-common docker-registry busybox-static catatonit
    skopeo umoci curl jq openssl apache2-utils zstd python3-venv
    docker-compose  # tests/dockerapi/test_compose.py: Debian's compose 1.29 against the Docker API
    docker.io  # dockerd and its 20.10 CLI: tests/dockerapi/test_versus_dockerd.py, the benchmarks
)

log() { printf '[setup] %s\n' "$*" >&2; }

need_root() {
    if [ "$(id -u)" != 0 ]; then
        echo "setup.sh must run as root (it installs packages and mounts cgroups)" >&2
        exit 1
    fi
}

# apt-get install without starting any service: without systemd, Debian's maintainer scripts
# would start dockerd through init.d with its default iptables rules (tests and benchmarks
# start their own private dockerd, firewall untouched, and stop it by pid). A policy-rc.d
# that forbids service starts exists for the duration of the install. scripts/bench.sh
# sources this file for its peers.
apt_install_quietly() {
    local guard=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        guard=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\nexit 101\n' > "$guard"; chmod +x "$guard"
    fi
    local rc=0
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null || rc=$?
    [ -z "$guard" ] || rm -f "$guard"
    return $rc
}

install_apt() {
    local missing=()
    for p in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        log "apt packages: all present"
        return
    fi
    log "apt packages: installing ${missing[*]}"
    apt-get update -qq
    apt_install_quietly "${missing[@]}"
}

python_bin() {
    # Python 3.11+ is required; prefer the one on PATH, fall back to Debian's.
    for py in python3.11 python3 /usr/bin/python3; do
        if command -v "$py" >/dev/null && "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
            command -v "$py"; return
        fi
    done
    echo "no Python 3.11 found" >&2; exit 1
}

make_venv() {
    if [ ! -x "$VENV/bin/python" ]; then
        log "virtualenv: creating $VENV"
        "$(python_bin)" -m venv "$VENV"
    fi
    local stamp="$VENV/.installed-$(sha256sum "$HERE/pyproject.toml" | cut -c1-16)"
    if [ ! -e "$stamp" ] || ! "$VENV/bin/python" -c 'import engine' 2>/dev/null; then
        log "virtualenv: installing engine and its dependencies"
        "$VENV/bin/pip" install -q --upgrade pip >/dev/null
        # compat mode: a plain path .pth, not setuptools' import-hook finder that costs every
        # engctl start ~10 ms; the default mode if a future setuptools drops compat.
        "$VENV/bin/pip" install -q -e "$HERE[test]" --config-settings editable_mode=compat 2>/dev/null \
            || "$VENV/bin/pip" install -q -e "$HERE[test]"
        rm -f "$VENV"/.installed-*
        touch "$stamp"
    else
        log "virtualenv: up to date"
    fi
    # Byte-code for the engine's own modules, written even where PYTHONDONTWRITEBYTECODE is
    # set: without it every engctl start compiles its modules again (~10 ms).
    "$VENV/bin/python" -m compileall -q "$HERE/engine" >/dev/null || true
}

prepare_host() {
    # crun refuses "hybrid" cgroup hosts while the cgroup2 mount holds a controller: move
    # each such controller (hugetlb, here) to a cgroup v1 mount of its own.
    local unified=/sys/fs/cgroup/unified
    if [ -f "$unified/cgroup.controllers" ]; then
        for c in $(cat "$unified/cgroup.controllers"); do
            mkdir -p "/sys/fs/cgroup/$c"
            mountpoint -q "/sys/fs/cgroup/$c" || mount -t cgroup -o "$c" cgroup "/sys/fs/cgroup/$c" || true
        done
        if [ -n "$(cat "$unified/cgroup.controllers")" ]; then
            log "WARNING: cgroup2 still holds controllers: $(cat "$unified/cgroup.controllers"); crun will refuse to run"
        fi
    fi
    modprobe overlay 2>/dev/null || true
    grep -qw overlay /proc/filesystems || { echo "this kernel has no overlayfs" >&2; exit 1; }
    log "host: prepared (cgroups for crun, overlayfs present)"
}

install_all() {
    need_root
    install_apt
    make_venv
    prepare_host
}

# sourced (scripts/bench.sh): define the functions only
[ "${BASH_SOURCE[0]}" = "$0" ] || return 0

case "${1:-}" in
    install) install_all ;;
    demo) install_all; exec "$HERE/scripts/demo.sh" ;;
    test)
        install_all
        shift
        cd "$HERE"
        export CI="${CI:-}"
        exec "$VENV/bin/python" -m pytest "$@"
        ;;
    *) echo "usage: $0 demo|test|install" >&2; exit 2 ;;
esac
