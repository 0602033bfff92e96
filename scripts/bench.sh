#!/usr/bin/env bash
# The benchmarks of issue 6: the engine side by side with raw runc/crun, podman and docker.
#
#   scripts/bench.sh            full run (~10 min): results in docs/benchmarks/
#   scripts/bench.sh --quick    smoke mode (~1 min), results in /var/tmp/engine-bench-results
#   scripts/bench.sh --no-peers raw runtimes and the engine only (no podman/docker install)
#   scripts/bench.sh --help     every option of bench/run.py
#
# Installs what it needs first: the project's own set-up (scripts/setup.sh install), then
# podman (with netavark and aardvark-dns, the network backend the harness configures: Debian's
# podman only recommends them, and --no-install-recommends leaves them out) and docker.io from
# apt (services are not started: dockerd is started by the harness, with iptables off, and
# stopped by pid) and matplotlib into .venv for the plot. A peer that cannot be installed is
# skipped with the reason printed. Needs root.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$HERE/.venv"
# shellcheck source=setup.sh
source "$HERE/scripts/setup.sh"  # apt_install_quietly: no service starts during an install
log() { printf '[bench] %s\n' "$*" >&2; }

want_peers=1
for arg in "$@"; do
    case "$arg" in --no-peers|-h|--help) want_peers=0 ;; esac
done

"$HERE/scripts/setup.sh" install

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

# Every package the peers need, named one by one: they are installed without recommends.
# (bench/engines.py PODMAN_HELPERS; tests/bench checks the two lists agree.)
PEER_PACKAGES=(podman netavark aardvark-dns docker.io)

install_peers() {
    local missing=()
    for p in "${PEER_PACKAGES[@]}"; do installed "$p" || missing+=("$p"); done
    [ ${#missing[@]} -eq 0 ] && return
    log "installing ${missing[*]} (apt)"
    apt-get update -qq || true
    apt_install_quietly "${missing[@]}" \
        || log "could not install ${missing[*]}: the harness will skip what is missing"
}

if [ "$want_peers" = 1 ]; then
    install_peers
    "$VENV/bin/python" -c 'import matplotlib' 2>/dev/null \
        || "$VENV/bin/pip" install -q matplotlib >/dev/null \
        || log "matplotlib could not be installed: no plot"
fi

cd "$HERE"
exec "$VENV/bin/python" -m bench.run "$@"
