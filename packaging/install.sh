#!/usr/bin/env bash
# Install DS01 on a Docker host: ds01d in front of dockerd. Idempotent; uninstall.sh undoes it.
#
#   packaging/install.sh [--prefix /opt/ds01] [--root DIR] [--no-systemctl] [--no-pip] [--source DIR]
#
# --root installs into a fake root (tests); --no-systemctl prints the systemctl calls instead of
# running them (hosts without systemd); --no-pip skips building the virtualenv.
set -euo pipefail

PREFIX=/opt/ds01 ROOT="" SYSTEMCTL=1 PIP=1
SOURCE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) PREFIX="$2"; shift 2 ;;
        --root) ROOT="$(cd "$2" && pwd)"; shift 2 ;;
        --no-systemctl) SYSTEMCTL=0; shift ;;
        --no-pip) PIP=0; shift ;;
        --source) SOURCE="$(cd "$2" && pwd)"; shift 2 ;;
        -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" -eq 0 ] || { echo "install.sh: run as root" >&2; exit 1; }
log() { printf 'ds01 install: %s\n' "$*"; }
systemctl_() {
    if [ "$SYSTEMCTL" = 1 ]; then systemctl "$@"; else log "(skipped) systemctl $*"; fi
}

STATE="$ROOT/var/lib/ds01"
MANIFEST="$STATE/install-manifest.json"
# Everything this install creates or changes is recorded, so uninstall.sh can put it back.
python3 "$SOURCE/packaging/manifest.py" begin "$ROOT" "$MANIFEST" \
    /opt/ds01 /etc/ds01 /etc/docker /etc/docker/plugins /etc/systemd/system \
    /etc/systemd/system/docker.service.d /var/lib/ds01 "$PREFIX"

if [ "$PIP" = 1 ]; then
    log "creating $PREFIX/venv and installing DS01 from $SOURCE"
    python3 -m venv "$ROOT$PREFIX/venv"
    "$ROOT$PREFIX/venv/bin/pip" install -q --disable-pip-version-check "$SOURCE"
else
    log "skipping the virtualenv (--no-pip)"
fi

install_file() {  # src dest mode
    python3 "$SOURCE/packaging/manifest.py" file "$ROOT" "$MANIFEST" "$2"
    mkdir -p "$(dirname "$ROOT$2")"
    install -m "$3" "$1" "$ROOT$2"
    log "wrote $2"
}
if [ -e "$ROOT/etc/ds01/policy.yaml" ]; then
    log "keeping the existing /etc/ds01/policy.yaml"
else
    install_file "$SOURCE/config/default-policy.yaml" /etc/ds01/policy.yaml 0644
fi
install_file "$SOURCE/packaging/ds01d.service" /etc/systemd/system/ds01d.service 0644
install_file "$SOURCE/packaging/docker.service.d/ds01.conf" /etc/systemd/system/docker.service.d/ds01.conf 0644
install_file "$SOURCE/packaging/ds01.spec" /etc/docker/plugins/ds01.spec 0644
python3 "$SOURCE/packaging/manifest.py" daemon-json "$ROOT" "$MANIFEST" "$SOURCE/packaging/daemon.json"
log "merged packaging/daemon.json into /etc/docker/daemon.json (original kept in the manifest)"

systemctl_ daemon-reload
systemctl_ mask docker.socket   # it would own /var/run/docker.sock; the gateway serves it now
systemctl_ stop docker.socket
systemctl_ enable --now ds01d.service
systemctl_ restart docker.service
log "done: dockerd listens on /run/ds01/dockerd.sock (root only), users keep /var/run/docker.sock"
log "check it with: ds01 doctor"
