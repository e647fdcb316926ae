"""A fake `nvidia-container-runtime-hook` that lets GPU containers start without GPUs.

dockerd 20.10 registers its built-in "nvidia" device driver only if an executable named
`nvidia-container-runtime-hook` is on dockerd's PATH when dockerd starts (daemon/nvidia_linux.go,
init()). For a DeviceRequest it then appends `NVIDIA_VISIBLE_DEVICES=<ids|0,1..|all>` (and
`NVIDIA_DRIVER_CAPABILITIES` when asked) to the container's process env and adds an OCI prestart
hook: path = that executable, args = ["nvidia-container-runtime-hook", "prestart"], env = dockerd's
own environment. runc runs it with the OCI state JSON (id, pid, bundle, ...) on stdin.

This module is both the installer (install_fake_hook) and the hook's code (hook_main): the
installed executable is a stub that loads this file by path, so it only imports the stdlib.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

HOOK_NAME = "nvidia-container-runtime-hook"
FAKE_HOOK_RECORD_ENV = "DS01_FAKE_HOOK_RECORD"
RECORD_FILE_NAME = "hook-records.jsonl"

_STUB = """#!{python}
# Fake {name} written by tests/harness/fake_nvidia_hook.py; records, never touches GPUs.
import importlib.util, sys
spec = importlib.util.spec_from_file_location("ds01_fake_nvidia_hook", {module!r})
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
sys.exit(mod.hook_main(sys.argv, default_record={record!r}))
"""


def default_record_path(hook_dir: str | os.PathLike[str]) -> str:
    """Where the hook installed in `hook_dir` records when DS01_FAKE_HOOK_RECORD is unset."""
    return os.fspath(Path(hook_dir).absolute() / RECORD_FILE_NAME)


def install_fake_hook(hook_dir: str | os.PathLike[str], python: str | None = None) -> str:
    """Write an executable `nvidia-container-runtime-hook` into `hook_dir`; returns its path."""
    directory = Path(hook_dir).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / HOOK_NAME
    stub = _STUB.format(
        python=python or sys.executable,
        name=HOOK_NAME,
        module=os.fspath(Path(__file__).absolute()),
        record=default_record_path(directory),
    )
    tmp = path.with_suffix(".tmp")
    tmp.write_text(stub)
    tmp.chmod(0o755)
    tmp.replace(path)  # atomic: a running dockerd never sees a half-written hook
    return os.fspath(path)


def _env_value(env: Sequence[str], key: str) -> str | None:
    # Last occurrence wins, like the real toolkit (it builds a map from process.env).
    value = None
    prefix = key + "="
    for item in env:
        if item.startswith(prefix):
            value = item[len(prefix) :]
    return value


def hook_main(
    argv: Sequence[str],
    default_record: str,
    stdin: IO[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Entry point of the installed hook: record the container's GPU env and exit 0."""
    environ = os.environ if environ is None else environ
    stdin = sys.stdin if stdin is None else stdin
    record_path = environ.get(FAKE_HOOK_RECORD_ENV) or default_record
    raw = stdin.read()
    try:
        state = json.loads(raw) if raw.strip() else {}
    except json.JSONDecodeError:
        state = {"unparsed": raw}
    bundle = state.get("bundle") or os.getcwd()
    config: dict[str, Any] = {}
    try:
        config = json.loads((Path(bundle) / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        config = {"error": f"{type(exc).__name__}: {exc}"}
    env = list((config.get("process") or {}).get("env") or [])
    record = {
        "time": time.time(),
        "argv": list(argv[1:]),
        "container_id": state.get("id"),
        "pid": state.get("pid"),
        "bundle": bundle,
        "NVIDIA_VISIBLE_DEVICES": _env_value(env, "NVIDIA_VISIBLE_DEVICES"),
        "NVIDIA_DRIVER_CAPABILITIES": _env_value(env, "NVIDIA_DRIVER_CAPABILITIES"),
        "env": env,
    }
    if "error" in config:
        record["config_error"] = config["error"]
    line = json.dumps(record, sort_keys=True) + "\n"
    Path(record_path).parent.mkdir(parents=True, exist_ok=True)
    # flock + O_APPEND: concurrent container starts must not interleave lines.
    with open(record_path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.write(line)
        fh.flush()
        fcntl.flock(fh, fcntl.LOCK_UN)
    return 0


def read_hook_records(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All records the fake hook appended to `path` (empty list if none yet)."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]
