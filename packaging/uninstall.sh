#!/usr/bin/env bash
# Put the host back as it was before packaging/install.sh, from its manifest.
#
#   packaging/uninstall.sh [--root DIR] [--no-systemctl] [--purge]
#
# --purge also removes /etc/ds01 (the policy) when the install created it.
set -euo pipefail

ROOT="" SYSTEMCTL=1 PURGE=0
SOURCE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
while [ $# -gt 0 ]; do
    case "$1" in
        --root) ROOT="$(cd "$2" && pwd)"; shift 2 ;;
        --no-systemctl) SYSTEMCTL=0; shift ;;
        --purge) PURGE=1; shift ;;
        -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
        *) echo "uninstall.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" -eq 0 ] || { echo "uninstall.sh: run as root" >&2; exit 1; }
log() { printf 'ds01 uninstall: %s\n' "$*"; }
systemctl_() {
    if [ "$SYSTEMCTL" = 1 ]; then systemctl "$@" || true; else log "(skipped) systemctl $*"; fi
}
MANIFEST="$ROOT/var/lib/ds01/install-manifest.json"
[ -f "$MANIFEST" ] || { echo "uninstall.sh: no $MANIFEST: DS01 was not installed by install.sh" >&2; exit 1; }

systemctl_ disable --now ds01d.service
python3 "$SOURCE/packaging/manifest.py" restore "$ROOT" "$MANIFEST" "$PURGE"
systemctl_ unmask docker.socket
systemctl_ daemon-reload
systemctl_ restart docker.service
log "done: dockerd is back on its own socket"
