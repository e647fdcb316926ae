#!/usr/bin/env bash
# Prepares a Debian 12 host for DS01 development and tests: a Docker engine (docker.io),
# static busybox (test image), socat, util-linux, and the project's .venv. Idempotent; the
# apt part needs root and is skipped entirely when every binary is already there.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf 'setup-host: %s\n' "$*"; }
# Root's PATH may lack sbin dirs (e.g. under sudo or in containers); dockerd lives there.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

have() { command -v "$1" >/dev/null 2>&1; }
# ldd fails on a static binary; the test image needs one (it has no libc inside).
static_busybox() { [ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1; }

as_root() {
    if [ "$(id -u)" -ne 0 ]; then
        log "ERROR: $* needs root (re-run as root)"
        exit 1
    fi
}

apt_install() {
    as_root "installing $*"
    export DEBIAN_FRONTEND=noninteractive
    # Keep apt from starting a system dockerd/containerd: tests use private daemons, and a
    # running /run/containerd would be shared by every private dockerd.
    local policy=/usr/sbin/policy-rc.d created=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        created=1
    fi
    local rc=0
    apt-get update -qq && apt-get install -y -qq -o Dpkg::Use-Pty=0 "$@" || rc=$?
    if [ "$created" = 1 ]; then rm -f "$policy"; fi
    return "$rc"
}

missing=()
for bin in dockerd containerd runc socat script runuser; do
    have "$bin" || missing+=("$bin")
done
static_busybox || missing+=("busybox(static)")
if [ "${#missing[@]}" -gt 0 ]; then
    log "missing: ${missing[*]}; installing packages"
    apt_install docker.io busybox-static socat util-linux
else
    log "docker.io, busybox-static, socat, util-linux: present"
fi
have docker || log "WARNING: no docker CLI on PATH"

# Tools the tests drive: curl (raw API calls), promtool (checks the Grafana dashboard's
# queries), node/npm for the real Dev Containers CLI, Debian's docker-compose (Compose v1 on
# docker-py; Compose v2 is not packaged in the registries this project can reach).
extra=()
have curl || extra+=(curl)
have promtool || extra+=(prometheus)
have npm || extra+=(nodejs npm)
have docker-compose || extra+=(docker-compose)
have systemd-analyze || extra+=(systemd)
have docker-registry || extra+=(docker-registry)  # a local registry for push/pull tests
have shellcheck || extra+=(shellcheck)            # lints packaging/*.sh in the tests
have tmux || extra+=(tmux)                        # a real terminal for the ds01 setup tests
if [ "${#extra[@]}" -gt 0 ]; then
    log "installing ${extra[*]}"
    apt_install "${extra[@]}"
fi
if ! have devcontainer; then
    log "installing the Dev Containers CLI (@devcontainers/cli) with npm"
    as_root "npm install -g"
    npm install -g --silent --no-audit --no-fund @devcontainers/cli
fi

# True if interpreter $1 is Python >= 3.11.
py_ok() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; }
# True if unprivileged users can run interpreter $1: e2e tests run .venv/bin/python as test
# users, and a venv only symlinks its base interpreter (pyenv under /root (0700) fails).
py_world_usable() {
    "$1" - >/dev/null 2>&1 <<'PY'
import os, stat, sys
def usable(path, bit):
    path = os.path.realpath(path)
    if not os.stat(path).st_mode & bit:
        return False
    while path != "/":
        path = os.path.dirname(path)
        if not os.stat(path).st_mode & stat.S_IXOTH:
            return False
    return True
ok = usable(sys.executable, stat.S_IXOTH) and usable(os.__file__, stat.S_IROTH)
sys.exit(0 if ok else 1)
PY
}

if [ -n "${PYTHON:-}" ]; then
    py_ok "$PYTHON" || { log "ERROR: PYTHON=$PYTHON is not Python >= 3.11"; exit 1; }
else
    PYTHON=""
    fallback=""
    for cand in "$(command -v python3 || true)" /usr/local/bin/python3 /usr/bin/python3; do
        [ -n "$cand" ] && [ -x "$cand" ] && py_ok "$cand" || continue
        [ -n "$fallback" ] || fallback="$cand"
        if py_world_usable "$cand"; then PYTHON="$cand"; break; fi
    done
    if [ -z "$PYTHON" ]; then
        [ -n "$fallback" ] || { log "ERROR: no Python >= 3.11 found"; exit 1; }
        PYTHON="$fallback"
        log "WARNING: $PYTHON is not usable by other users; e2e tests as test users may fail"
    fi
fi

# A venv whose interpreter is gone, or that test users cannot run (when a better one
# exists), is rebuilt.
if [ -d .venv ] && ! .venv/bin/python -c 'import sys' >/dev/null 2>&1; then
    log "rebuilding broken .venv"
    rm -rf .venv
elif [ -d .venv ] && ! py_world_usable .venv/bin/python && py_world_usable "$PYTHON"; then
    log "rebuilding .venv: its interpreter is not usable by other users"
    rm -rf .venv
fi
if [ ! -d .venv ]; then
    # Debian's own python3 ships venv's ensurepip separately.
    if ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
        log "installing python3-venv"
        apt_install python3-venv
    fi
    log "creating .venv with $("$PYTHON" -V 2>&1) ($PYTHON)"
    "$PYTHON" -m venv .venv
fi

# Reinstall only when pyproject.toml changed since the last successful install.
stamp=.venv/.ds01-installed
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ "${FORCE:-}" != 1 ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] &&
    [ -x .venv/bin/ruff ] &&
    .venv/bin/python -c 'import importlib.metadata as m, pytest; m.version("ds01")' >/dev/null 2>&1; then
    log ".venv up to date"
else
    log "installing DS01 and test extras into .venv"
    .venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
    printf '%s\n' "$want" >"$stamp"
fi
log "done"
