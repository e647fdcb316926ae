"""What packaging/install.sh changed on a host, recorded so uninstall.sh can undo exactly that.

Standard library only: it runs with the system python3 before DS01 is installed.

    manifest.py begin ROOT MANIFEST DIR...     note which of these directories exist already
    manifest.py file ROOT MANIFEST PATH        note PATH's content before it is written
    manifest.py daemon-json ROOT MANIFEST FRAGMENT
                                               note /etc/docker/daemon.json, then merge FRAGMENT
    manifest.py restore ROOT MANIFEST PURGE    put every noted file and directory back
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import sys

DAEMON_JSON = "/etc/docker/daemon.json"
KEEP_UNLESS_PURGE = ("/etc/ds01/",)


def load(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def save(path: str, manifest: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def begin(root: str, manifest_path: str, dirs: list[str]) -> None:
    if os.path.exists(manifest_path):
        return  # a re-run: the first install's record of the original host stands
    every = set()
    for directory in dirs:  # and their parents, which mkdir -p may create too
        while directory not in ("/", ""):
            every.add(directory)
            directory = os.path.dirname(directory)
    existed = {d: os.path.isdir(root + d) for d in sorted(every)}
    os.makedirs(os.path.dirname(manifest_path), exist_ok=True)
    save(manifest_path, {"dirs": existed, "files": {}})


def note_file(root: str, manifest_path: str, path: str) -> None:
    manifest = load(manifest_path)
    if path in manifest["files"]:
        return
    full = root + path
    entry: dict = {"existed": os.path.exists(full)}
    if entry["existed"]:
        with open(full, "rb") as f:
            entry["content"] = base64.b64encode(f.read()).decode()
        entry["mode"] = os.stat(full).st_mode & 0o7777
    manifest["files"][path] = entry
    save(manifest_path, manifest)


def merge_daemon_json(root: str, manifest_path: str, fragment_path: str) -> None:
    note_file(root, manifest_path, DAEMON_JSON)
    full = root + DAEMON_JSON
    current = {}
    if os.path.exists(full):
        with open(full) as f:
            text = f.read().strip()
        current = json.loads(text) if text else {}
    fragment = load(fragment_path)
    merged = dict(current)
    merged["hosts"] = fragment["hosts"]  # dockerd moves behind the gateway
    merged["group"] = fragment["group"]
    plugins = [p for p in current.get("authorization-plugins", []) if p != "ds01"]
    merged["authorization-plugins"] = [*plugins, "ds01"]
    opts = current.get("exec-opts", [])
    if not any(o.startswith("native.cgroupdriver=") for o in opts):
        opts = [*opts, *fragment["exec-opts"]]
    merged["exec-opts"] = opts
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "w") as f:
        json.dump(merged, f, indent=2)
        f.write("\n")


def restore(root: str, manifest_path: str, purge: bool) -> None:
    manifest = load(manifest_path)
    for path, entry in manifest["files"].items():
        full = root + path
        if entry["existed"]:
            with open(full, "wb") as f:
                f.write(base64.b64decode(entry["content"]))
            os.chmod(full, entry["mode"])
        elif os.path.exists(full) and (purge or not path.startswith(KEEP_UNLESS_PURGE)):
            os.remove(full)
    os.remove(manifest_path)
    created = [d for d, existed in manifest["dirs"].items() if not existed]
    for directory in sorted(created, key=len, reverse=True):  # deepest first
        full = root + directory
        if not os.path.isdir(full):
            continue
        if directory.startswith(("/opt/", "/var/lib/ds01")) and (
            purge or directory.startswith("/opt/")
        ):
            shutil.rmtree(full)  # the venv, and with --purge ds01d's state (audit log)
        elif not os.listdir(full):
            os.rmdir(full)


def main(argv: list[str]) -> int:
    command, root, manifest_path, *rest = argv
    if command == "begin":
        begin(root, manifest_path, rest)
    elif command == "file":
        note_file(root, manifest_path, rest[0])
    elif command == "daemon-json":
        merge_daemon_json(root, manifest_path, rest[0])
    elif command == "restore":
        restore(root, manifest_path, rest[0] == "1")
    else:
        print(f"manifest.py: unknown command {command}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
