#!/usr/bin/env bash
# Put the host back as it was before packaging/install.sh, from its manifest.
#
#   packaging/uninstall.sh [--root DIR] [--no-systemctl] [--purge] [--python PATH]
#
#   --purge          also remove the policy (/etc/ds01) and ds01d's state (/var/lib/ds01: the
#                    audit log, the DCGM job mapping) when the install created them
#   --root DIR       uninstall from a fake root (implies --no-systemctl)
#   --no-systemctl   print the systemctl calls instead of running them (hosts without systemd:
#                    stop ds01d yourself first, restart dockerd afterwards)
#   --systemctl CMD  run CMD instead of systemctl, even with --root (tests record the calls)
#
# Files the install replaced come back byte for byte (with their mode, owner and times), files
# and directories it created go; ds01d is disabled and the docker units run as they did.
set -euo pipefail

ROOT="" SYSTEMCTL=1 PURGE=0 PYTHON="" SYSTEMCTL_CMD=""
SOURCE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; }
while [ $# -gt 0 ]; do
    case "$1" in
        --root) [ -n "${2:-}" ] || { echo "uninstall.sh: --root needs a value" >&2; exit 2; }
                ROOT="$(cd "$2" && pwd)"; shift 2 ;;
        --python) PYTHON="${2:?--python needs a value}"; shift 2 ;;
        --systemctl) SYSTEMCTL_CMD="${2:?--systemctl needs a value}"; shift 2 ;;
        --no-systemctl) SYSTEMCTL=0; shift ;;
        --purge) PURGE=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "uninstall.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
[ "$ROOT" = / ] && ROOT=""
[ "$(id -u)" -eq 0 ] || { echo "uninstall.sh: run as root (sudo $0)" >&2; exit 1; }
if [ -n "$ROOT" ] && [ -z "$SYSTEMCTL_CMD" ]; then SYSTEMCTL=0; fi
if [ -z "$PYTHON" ]; then
    PYTHON=/usr/bin/python3
    [ -x "$PYTHON" ] || PYTHON="$(command -v python3)"
fi
log() { printf 'ds01 uninstall: %s\n' "$*"; }
systemctl_() {  # best effort: a unit that is already gone or stopped is fine
    if [ "$SYSTEMCTL" = 1 ]; then
        log "  systemctl $*"
        "${SYSTEMCTL_CMD:-systemctl}" "$@" || log "  (systemctl $1 failed; continuing)"
    else
        log "  (skipped) systemctl $*"
    fi
}
helper() { "$PYTHON" "$SOURCE/packaging/install_helper.py" "$@"; }
MANIFEST="$ROOT/var/lib/ds01/install-manifest.json"
[ -f "$MANIFEST" ] || {
    echo "uninstall.sh: no /var/lib/ds01/install-manifest.json under '${ROOT:-/}': DS01 was not installed by install.sh (or is already uninstalled)" >&2
    exit 1
}
helper verify "$ROOT" "$MANIFEST"  # a damaged backup stops us before dockerd is touched
services="$(helper get "$ROOT" "$MANIFEST" services)"
was_active() {  # UNIT: was it active before the install? (unknown: yes for docker.service)
    "$PYTHON" -c 'import json, sys
s = json.loads(sys.argv[1]) or {}
sys.exit(0 if s.get(sys.argv[2], "active" if sys.argv[2] == "docker.service" else "") == "active" else 1)' "$services" "$1"
}

log "[1/3] stopping dockerd and ds01d"
systemctl_ stop docker.service docker.socket
systemctl_ disable --now ds01d.service
if [ "$SYSTEMCTL" = 1 ]; then
    # Runtime leftovers (tmpfs, gone at reboot anyway): dockerd's root-only socket directory
    # (kept by ds01d's RuntimeDirectoryPreserve=) and the plugin socket.
    rm -rf "$ROOT/run/ds01"
    rm -f "$ROOT/run/docker/plugins/ds01.sock"
fi

log "[2/3] restoring files from the manifest"
helper restore "$ROOT" "$MANIFEST" "$PURGE" | sed 's/^/ds01 uninstall:   /'

log "[3/3] docker as before"
systemctl_ daemon-reload
for unit in docker.socket docker.service; do
    if was_active "$unit"; then systemctl_ start "$unit"; fi
done
if [ "$SYSTEMCTL" = 1 ]; then
    log "done: dockerd is back on its own socket"
else
    log "done (files only): stop ds01d if it runs, then restart dockerd"
fi
