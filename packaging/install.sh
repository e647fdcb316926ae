#!/usr/bin/env bash
# Install DS01 on a Docker host: ds01d in front of dockerd. Idempotent; uninstall.sh undoes it.
#
#   packaging/install.sh [--prefix /opt/ds01] [--etc /etc] [--source DIR] [--root DIR]
#                        [--no-systemctl] [--no-pip] [--python PATH]
#
#   --prefix DIR     the virtualenv goes to DIR/venv (default /opt/ds01)
#   --etc DIR        DS01's configuration goes to DIR/ds01 (default /etc; Docker's and
#                    systemd's files always go to /etc)
#   --source DIR     the DS01 checkout to install (default: this script's ..)
#   --root DIR       install into a fake root: every path is prefixed by DIR (implies
#                    --no-systemctl); for tests and image builds
#   --no-systemctl   print the systemctl calls instead of running them (hosts without systemd)
#   --no-pip         do not build the virtualenv (tests)
#   --python PATH    the interpreter for the virtualenv (default /usr/bin/python3, >= 3.11)
#   --systemctl CMD  run CMD instead of systemctl, even with --root (tests record the calls)
#
# Everything it changes is recorded in /var/lib/ds01/install-manifest.json, and every file it
# replaces is backed up under /var/lib/ds01/backup/ first (once, by the first install).
set -euo pipefail

PREFIX=/opt/ds01 ETC=/etc ROOT="" SYSTEMCTL=1 PIP=1 PYTHON="" SYSTEMCTL_CMD=""
SOURCE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; }
need_value() {
    if [ $# -lt 2 ] || [ -z "$2" ]; then echo "install.sh: $1 needs a value" >&2; exit 2; fi
}
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) need_value "$@"; PREFIX="$2"; shift 2 ;;
        --etc) need_value "$@"; ETC="$2"; shift 2 ;;
        --root) need_value "$@"; ROOT="$(cd "$2" && pwd)"; shift 2 ;;
        --source) need_value "$@"; SOURCE="$(cd "$2" && pwd)"; shift 2 ;;
        --python) need_value "$@"; PYTHON="$2"; shift 2 ;;
        --systemctl) need_value "$@"; SYSTEMCTL_CMD="$2"; shift 2 ;;
        --no-systemctl) SYSTEMCTL=0; shift ;;
        --no-pip) PIP=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
[ "$ROOT" = / ] && ROOT=""
for dir in "$PREFIX" "$ETC"; do
    case "$dir" in /*) ;; *) echo "install.sh: $dir must be an absolute path" >&2; exit 2 ;; esac
done
PREFIX="${PREFIX%/}" ETC="${ETC%/}"
[ "$(id -u)" -eq 0 ] || { echo "install.sh: run as root (sudo $0)" >&2; exit 1; }
if [ -n "$ROOT" ] && [ -z "$SYSTEMCTL_CMD" ]; then SYSTEMCTL=0; fi

STEP=0 STEPS=6
log() { printf 'ds01 install: %s\n' "$*"; }
step() { STEP=$((STEP + 1)); printf 'ds01 install: [%d/%d] %s\n' "$STEP" "$STEPS" "$*"; }
systemctl_() {
    if [ "$SYSTEMCTL" = 1 ]; then
        log "  systemctl $*"
        "${SYSTEMCTL_CMD:-systemctl}" "$@"
    else
        log "  (skipped) systemctl $*"
    fi
}
on_exit() {
    local rc=$?
    [ "$rc" -eq 0 ] && return
    echo "install.sh: stopped at step $STEP (exit $rc)." >&2
    [ -f "${MANIFEST:-}" ] && echo "install.sh: what it changed so far is recorded; packaging/uninstall.sh puts it back." >&2
    return 0
}
trap on_exit EXIT

# The system interpreter: a venv links to it, and users run ds01 from the venv, so it must not
# live under /root (pyenv and the like) where they cannot reach it.
if [ -z "$PYTHON" ]; then
    PYTHON=/usr/bin/python3
    [ -x "$PYTHON" ] || PYTHON="$(command -v python3 || true)"
fi
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || {
    echo "install.sh: DS01 needs Python >= 3.11 (${PYTHON:-python3} is not); give one with --python" >&2
    exit 1
}
helper() { "$PYTHON" "$SOURCE/packaging/install_helper.py" "$@"; }
MANIFEST="$ROOT/var/lib/ds01/install-manifest.json"
VENV="$PREFIX/venv"
UNITS=/etc/systemd/system

step "checking the host (nothing is changed if something is refused)"
if [ ! -f "$SOURCE/pyproject.toml" ] || [ ! -f "$SOURCE/config/default-policy.yaml" ]; then
    echo "install.sh: $SOURCE is not a DS01 checkout (give one with --source)" >&2
    exit 1
fi
helper preflight "$ROOT" "$SOURCE/packaging/daemon.json"
if [ "$SYSTEMCTL" = 1 ] && [ -z "$SYSTEMCTL_CMD" ] && [ ! -d /run/systemd/system ]; then
    echo "install.sh: systemd is not running here. To fix: re-run with --no-systemctl (and start ds01d and dockerd yourself)" >&2
    exit 1
fi
if [ "$PIP" = 1 ]; then
    "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null || {
        echo "install.sh: $PYTHON cannot create virtualenvs. To fix: apt-get install python3-venv" >&2
        exit 1
    }
fi
helper begin "$ROOT" "$MANIFEST" "$VENV" "$ETC/ds01" /etc/docker/plugins \
    "$UNITS/docker.service.d" "$UNITS/docker.socket.d" /usr/local/bin /var/lib/ds01
helper set-once "$ROOT" "$MANIFEST" keep_unless_purge "[\"$ETC/ds01/\"]"
# Which docker units ran before the first install, so that uninstall starts them again.
if [ "$SYSTEMCTL" = 1 ] && [ "$(helper get "$ROOT" "$MANIFEST" services)" = null ]; then
    sock="$("${SYSTEMCTL_CMD:-systemctl}" is-active docker.socket || true)"
    svc="$("${SYSTEMCTL_CMD:-systemctl}" is-active docker.service || true)"
    helper set-once "$ROOT" "$MANIFEST" services "{\"docker.socket\": \"$sock\", \"docker.service\": \"$svc\"}"
fi
log "  host ok; recording changes in /var/lib/ds01/install-manifest.json"

step "DS01 itself: $VENV, /usr/local/bin/ds01"
if [ -e "$ROOT$VENV" ]; then venv_existed=true; else venv_existed=false; fi
helper set-once "$ROOT" "$MANIFEST" venv "{\"path\": \"$VENV\", \"existed\": $venv_existed}"
if [ "$PIP" = 1 ]; then
    [ -x "$ROOT$VENV/bin/python" ] || "$PYTHON" -m venv "$ROOT$VENV"
    log "  pip install $SOURCE (a minute the first time)"
    "$ROOT$VENV/bin/pip" install -q --disable-pip-version-check --upgrade "$SOURCE"
else
    log "  (skipped) the virtualenv (--no-pip)"
fi
# Each helper call that writes prints "changed" or "unchanged"; a refusal stops the install.
changed() {
    local out
    out="$(helper "$1" "$ROOT" "$MANIFEST" "${@:2}")" || exit 1
    [ "$out" = changed ]
}
put() {  # DEST MODE SRC [OLD=NEW...]; true when DEST was (re)written
    if changed put "$@"; then
        log "  wrote $1"
        return 0
    fi
    log "  $1 is up to date"
    return 1
}
put "$PREFIX/README.md" 0644 "$SOURCE/README.md" || true
if changed link /usr/local/bin/ds01 "$VENV/bin/ds01"; then
    log "  linked /usr/local/bin/ds01 -> $VENV/bin/ds01"
fi

step "the policy: $ETC/ds01/policy.yaml"
if [ -e "$ROOT$ETC/ds01/policy.yaml" ]; then
    log "  keeping the existing $ETC/ds01/policy.yaml"
else
    put "$ETC/ds01/policy.yaml" 0644 "$SOURCE/config/default-policy.yaml" || true
fi

step "systemd units: ds01d.service, docker.service.d/ds01.conf, docker.socket.d/ds01.conf"
units_changed=0 docker_changed=0
put "$UNITS/ds01d.service" 0644 "$SOURCE/packaging/ds01d.service" \
    "/opt/ds01/venv/bin/ds01d=$VENV/bin/ds01d" "/opt/ds01/README.md=$PREFIX/README.md" \
    "/etc/ds01/policy.yaml=$ETC/ds01/policy.yaml" && units_changed=1
if changed docker-dropin "$SOURCE/packaging/docker.service.d/ds01.conf" \
    "$UNITS/docker.service.d/ds01.conf"; then
    log "  wrote $UNITS/docker.service.d/ds01.conf (dockerd without -H fd://, after ds01d)"
    units_changed=1 docker_changed=1
else
    log "  $UNITS/docker.service.d/ds01.conf is up to date"
fi
put "$UNITS/docker.socket.d/ds01.conf" 0644 "$SOURCE/packaging/docker.socket.d/ds01.conf" &&
    units_changed=1 docker_changed=1
if [ "$units_changed" = 1 ]; then systemctl_ daemon-reload; fi

step "dockerd behind the gateway: /etc/docker/daemon.json, /etc/docker/plugins/ds01.spec"
put /etc/docker/plugins/ds01.spec 0644 "$SOURCE/packaging/ds01.spec" || true
if changed daemon-json "$SOURCE/packaging/daemon.json"; then
    log "  merged packaging/daemon.json into /etc/docker/daemon.json (original: /var/lib/ds01/backup/)"
    docker_changed=1
else
    log "  /etc/docker/daemon.json already has DS01's keys"
fi

step "services"
systemctl_ enable ds01d.service
if [ "$docker_changed" = 1 ]; then
    log "  dockerd restarts on its new socket (running containers stop unless \"live-restore\" is on)"
    systemctl_ stop docker.service docker.socket
    systemctl_ restart ds01d.service
    systemctl_ start docker.service
else
    systemctl_ restart ds01d.service   # new code or unit; dockerd keeps running
fi

if [ "$SYSTEMCTL" = 1 ]; then
    log "done: users keep /var/run/docker.sock (the gateway); dockerd listens on /run/ds01/dockerd.sock (root only)"
    log "check it with: ds01 doctor"
else
    log "done (files only). Without systemd, start the services yourself, in this order:"
    log "  mkdir -p /run/ds01"
    log "  $(sed -n 's/^ExecStart=//p' "$ROOT$UNITS/ds01d.service") &"
    log "  then restart dockerd (it reads /etc/docker/daemon.json), and run: ds01 doctor"
fi
