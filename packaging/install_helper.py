"""The file work of packaging/install.sh and uninstall.sh, and the manifest that undoes it.

Standard library only: it runs with the system python3 before DS01 is installed. ROOT is ""
on a real host or a fake root (tests); every host path below is absolute and prefixed by it.

    install_helper.py preflight ROOT FRAGMENT
        refuse, before anything is changed, a host DS01 cannot be put on safely
    install_helper.py begin ROOT MANIFEST DIR...
        start the manifest (first install only): which of these directories exist already
    install_helper.py set-once ROOT MANIFEST KEY JSON     record KEY unless already recorded
    install_helper.py get ROOT MANIFEST KEY               print KEY's JSON value (or null)
    install_helper.py put ROOT MANIFEST DEST MODE SRC [OLD=NEW...]
        install SRC (with text replacements) as DEST; back up what DEST was, once
    install_helper.py link ROOT MANIFEST DEST TARGET      a symlink, likewise
    install_helper.py docker-dropin ROOT MANIFEST TEMPLATE DEST
        docker.service.d/ds01.conf with the host's own dockerd command line minus `-H fd://`
    install_helper.py daemon-json ROOT MANIFEST FRAGMENT  merge FRAGMENT into daemon.json
    install_helper.py verify ROOT MANIFEST                every backup is intact (before uninstalling)
    install_helper.py restore ROOT MANIFEST PURGE         put back every noted file and directory

put, link, docker-dropin and daemon-json print "changed" or "unchanged". A refusal exits 3
with the reason and the fix on stderr.
"""

from __future__ import annotations

import datetime
import glob
import hashlib
import json
import os
import re
import shlex
import shutil
import sys
import tempfile
from typing import Any

DAEMON_JSON = "/etc/docker/daemon.json"
DEFAULT_DOCKER = "/etc/default/docker"
STATE_DIR = "/var/lib/ds01"
BACKUP_DIR = STATE_DIR + "/backup"
# systemd's unit search path, highest precedence first.
UNIT_DIRS = (
    "/etc/systemd/system",
    "/run/systemd/system",
    "/usr/local/lib/systemd/system",
    "/lib/systemd/system",
    "/usr/lib/systemd/system",
)
OUR_DROPIN = "ds01.conf"
# Removed by uninstall only with --purge: the admin's policy (the manifest says where it is).
KEEP_UNLESS_PURGE = ("/etc/ds01/",)
# Left by uninstall when purging is not asked for: ds01d's audit log and job mapping.
STATE_KEPT = (STATE_DIR,)


class Refusal(Exception):
    """The host is not in a state DS01 can be installed on (or undone from) safely."""


# ----------------------------------------------------------------------------- manifest


def load(path: str) -> dict[str, Any]:
    with open(path) as f:
        return json.load(f)


def save(path: str, manifest: dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".manifest.")
    with os.fdopen(fd, "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.write("\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def parents(path: str) -> list[str]:
    out = []
    while path not in ("/", ""):
        out.append(path)
        path = os.path.dirname(path)
    return out


def begin(root: str, manifest_path: str, dirs: list[str]) -> None:
    if os.path.exists(manifest_path):
        manifest = load(manifest_path)  # a re-run: the first install's record stands, but a
        new = {d for directory in dirs for d in parents(directory)} - set(manifest["dirs"])
        for d in sorted(new):  # directory this version installs to that the last did not
            manifest["dirs"][d] = os.path.isdir(root + d)
        save(manifest_path, manifest)
        return
    every = {d for directory in dirs for d in parents(directory)}
    every.update(parents(os.path.dirname(manifest_path[len(root) :])))
    manifest = {
        "version": 1,
        "installed": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "dirs": {d: os.path.isdir(root + d) for d in sorted(every)},
        "files": {},
    }
    save(manifest_path, manifest)


def set_once(manifest_path: str, key: str, value: Any) -> None:
    manifest = load(manifest_path)
    if key not in manifest:
        manifest[key] = value
        save(manifest_path, manifest)


def sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def note(root: str, manifest_path: str, path: str) -> None:
    """Record what ``path`` is before the first change to it, backing up its content."""
    manifest = load(manifest_path)
    if path in manifest["files"]:
        return
    full = root + path
    entry: dict[str, Any] = {"existed": os.path.lexists(full)}
    if os.path.islink(full):
        entry.update(kind="symlink", target=os.readlink(full))
    elif entry["existed"]:
        if not os.path.isfile(full):
            raise Refusal(f"{path} exists and is not a regular file: move it away first")
        st = os.stat(full)
        backup = f"{BACKUP_DIR}{path}.orig"
        os.makedirs(os.path.dirname(root + backup), mode=0o700, exist_ok=True)
        shutil.copy2(full, root + backup)  # content, mode and times
        entry.update(
            kind="file",
            backup=backup,
            sha256=sha256(full),
            mode=st.st_mode & 0o7777,
            uid=st.st_uid,
            gid=st.st_gid,
        )
    manifest["files"][path] = entry
    save(manifest_path, manifest)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def record_written(manifest_path: str, path: str, digest: str) -> None:
    manifest = load(manifest_path)
    manifest["files"][path]["written_sha256"] = digest
    save(manifest_path, manifest)


def write_atomic(full: str, data: bytes, mode: int) -> None:
    os.makedirs(os.path.dirname(full), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(full), prefix=".ds01-install.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, full)  # dockerd or systemd never read half a file
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def put_bytes(root: str, manifest_path: str, path: str, data: bytes, mode: int) -> bool:
    """Install ``data`` as ``path``; False when it is already exactly that."""
    full = root + path
    if (
        os.path.isfile(full)
        and not os.path.islink(full)
        and os.stat(full).st_mode & 0o7777 == mode
        and _read(full) == data
    ):
        return False
    note(root, manifest_path, path)
    write_atomic(full, data, mode)
    record_written(manifest_path, path, hashlib.sha256(data).hexdigest())
    return True


def put(
    root: str, manifest_path: str, path: str, mode: str, src: str, replacements: list[str]
) -> bool:
    with open(src) as f:
        text = f.read()
    for pair in replacements:
        old, _, new = pair.partition("=")
        text = text.replace(old, new)
    return put_bytes(root, manifest_path, path, text.encode(), int(mode, 8))


def link(root: str, manifest_path: str, path: str, target: str) -> bool:
    full = root + path
    if os.path.islink(full) and os.readlink(full) == target:
        return False
    note(root, manifest_path, path)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    if os.path.lexists(full):
        os.unlink(full)
    os.symlink(target, full)
    return True


# ----------------------------------------------------------------------------- dockerd's command line


def _unit_lines(path: str) -> list[tuple[str, str, str]]:
    """(section, key, value) of a unit file, continuation lines joined."""
    out = []
    section = ""
    pending = ""
    with open(path, encoding="utf-8", errors="replace") as f:
        for raw in f:
            line = pending + raw.rstrip("\n")
            if line.endswith("\\"):
                pending = line[:-1] + " "
                continue
            pending = ""
            stripped = line.strip()
            if not stripped or stripped[0] in "#;":
                continue
            if stripped.startswith("["):
                section = stripped.strip("[]")
            elif "=" in stripped:
                key, _, value = stripped.partition("=")
                out.append((section, key.strip(), value.strip()))
    return out


def docker_unit_files(root: str, unit: str = "docker.service") -> tuple[str | None, list[str]]:
    """The unit file systemd would load for ``unit`` and its drop-ins in the order it reads them."""
    main = None
    for directory in UNIT_DIRS:
        candidate = root + directory + "/" + unit
        if os.path.isfile(candidate) and os.path.realpath(candidate) != "/dev/null":
            main = candidate
            break
    dropins: dict[str, str] = {}
    for directory in UNIT_DIRS:
        for path in glob.glob(f"{root}{directory}/{unit}.d/*.conf"):
            dropins.setdefault(os.path.basename(path), path)  # a higher directory masks
    return main, [dropins[name] for name in sorted(dropins)]


def _exec_start(files: list[str]) -> tuple[str | None, str | None]:
    """The effective ExecStart= of these files read in order, and the file that set it."""
    value = where = None
    for path in files:
        for section, key, line in _unit_lines(path):
            if section == "Service" and key == "ExecStart":
                value, where = (line or None), path
    return value, where


HOST_FLAGS = ("-H", "--host")


def strip_fd_host(command: str, where: str) -> str:
    """dockerd's command line without ``-H fd://``; any other listener is refused."""
    prefix = re.match(r"^[@\-:+!]*", command).group(0)
    words = shlex.split(command[len(prefix) :])
    kept: list[str] = []
    others: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        value = None
        if word in HOST_FLAGS and i + 1 < len(words):
            value, i = words[i + 1], i + 2
        elif word.startswith(("-H=", "--host=")):
            value, i = word.split("=", 1)[1], i + 1
        elif word.startswith("-H") and not word.startswith("--"):
            value, i = word[2:], i + 1
        else:
            kept.append(word)
            i += 1
            continue
        if not value.startswith("fd://"):
            others.append(value)
    if others:
        raise Refusal(
            f"dockerd's ExecStart in {where} also listens on {', '.join(others)}: with DS01 its "
            'only socket is the root-only one in daemon.json "hosts". To fix: remove those -H '
            "flags (users reach Docker through /var/run/docker.sock, the gateway), then re-run."
        )
    return prefix + " ".join(_quote(w) for w in kept)


def _quote(word: str) -> str:
    # systemd's quoting is shell-like for these cases; $VARS stay unquoted so they still expand.
    if re.fullmatch(r"[\w@%+=:,./${}-]+", word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def docker_exec_start(root: str) -> str | None:
    """The ExecStart= our drop-in should set, or None when no docker.service is installed."""
    main, dropins = docker_unit_files(root)
    if main is None:
        return None
    later = [p for p in dropins if os.path.basename(p) > OUR_DROPIN]
    ours = [p for p in dropins if os.path.basename(p) == OUR_DROPIN]
    for path in later:
        if _exec_start([path])[1]:
            raise Refusal(
                f"{path[len(root) :]} sets ExecStart= and systemd reads it after "
                f"docker.service.d/{OUR_DROPIN}, so dockerd would keep -H fd://. To fix: move "
                "its flags into /etc/docker/daemon.json and remove its ExecStart lines."
            )
    earlier = [p for p in dropins if p not in later and p not in ours]
    command, where = _exec_start([main, *earlier])
    if command is None:
        raise Refusal(f"{main[len(root) :]} has no ExecStart=: is docker.io installed?")
    return strip_fd_host(command, where[len(root) :])


def docker_dropin(root: str, manifest_path: str, template: str, path: str) -> bool:
    with open(template) as f:
        text = f.read()
    command = docker_exec_start(root)
    if command is not None:
        text = re.sub(r"(?m)^ExecStart=\S.*$", lambda _: "ExecStart=" + command, text, count=1)
    return put_bytes(root, manifest_path, path, text.encode(), 0o644)


def default_docker_hosts(root: str) -> list[str]:
    """``-H`` values in DOCKER_OPTS of /etc/default/docker (Debian's docker.service reads it)."""
    try:
        with open(root + DEFAULT_DOCKER) as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        match = re.match(r"\s*(?:export\s+)?DOCKER_OPTS=(.*)$", line)
        if not match:
            continue
        try:
            words = shlex.split(shlex.split(match.group(1))[0]) if match.group(1).strip() else []
        except (ValueError, IndexError):
            continue
        for i, word in enumerate(words):
            if word in HOST_FLAGS and i + 1 < len(words):
                found.append(words[i + 1])
            elif word.startswith(("-H=", "--host=")):
                found.append(word.split("=", 1)[1])
            elif word.startswith("-H") and not word.startswith("--") and len(word) > 2:
                found.append(word[2:])
    return found


# ----------------------------------------------------------------------------- daemon.json


def read_daemon_json(root: str) -> dict[str, Any] | None:
    full = root + DAEMON_JSON
    if os.path.islink(full):
        raise Refusal(
            f"{DAEMON_JSON} is a symlink (to {os.readlink(full)}): the installer writes it and "
            "uninstall restores it byte for byte. To fix: replace the link by a copy of the file."
        )
    if not os.path.exists(full):
        return None
    with open(full, "rb") as f:
        raw = f.read()
    if not raw.strip():
        return {}
    try:
        current = json.loads(raw)
    except ValueError as exc:
        raise Refusal(
            f"{DAEMON_JSON} is not valid JSON ({exc}); dockerd would not start with it either. "
            "To fix: correct it, then re-run."
        ) from exc
    if not isinstance(current, dict):
        raise Refusal(f"{DAEMON_JSON} is not a JSON object. To fix: correct it, then re-run.")
    return current


def merged_daemon_json(
    current: dict[str, Any], fragment: dict[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    """``current`` with DS01's keys; warnings for the admin."""
    hosts = current.get("hosts")
    if hosts not in (None, [], fragment["hosts"]):
        raise Refusal(
            f'{DAEMON_JSON} already has "hosts": {json.dumps(hosts)}. DS01 moves dockerd to '
            f"{fragment['hosts'][0]} (root only) and serves /var/run/docker.sock itself; any "
            "other listener would let users bypass it (TCP) or would be taken over. To fix: remove "
            '"hosts" from daemon.json (users keep DOCKER_HOST unset), then re-run.'
        )
    warnings = []
    merged = dict(current)
    merged["hosts"] = fragment["hosts"]
    if current.get("group", fragment["group"]) != fragment["group"]:
        warnings.append(
            f'"group": "{current["group"]}" replaced by "{fragment["group"]}": dockerd\'s real '
            "socket is root-only, members of that group use the gateway like everyone else"
        )
    merged["group"] = fragment["group"]
    plugins = [p for p in current.get("authorization-plugins", []) if p != "ds01"]
    merged["authorization-plugins"] = [*plugins, "ds01"]
    opts = list(current.get("exec-opts", []))
    drivers = [o for o in opts if o.replace(" ", "").startswith("native.cgroupdriver=")]
    if drivers:
        driver = drivers[-1].split("=", 1)[1].strip()
        if f"native.cgroupdriver={driver}" not in fragment["exec-opts"]:
            warnings.append(
                f"dockerd keeps its cgroup driver {driver}: set `cgroup_driver: {driver}` in "
                "/etc/ds01/policy.yaml (ds01 doctor checks that they match)"
            )
    else:
        opts += fragment["exec-opts"]
        driver = fragment["exec-opts"][0].split("=", 1)[1]
    merged["exec-opts"] = opts
    merged["cgroup-parent"] = _build_parent(current, fragment, driver, warnings)
    if current.get("default-runtime") == "nvidia":
        warnings.append(
            '"default-runtime": "nvidia" lets an image\'s ENV NVIDIA_VISIBLE_DEVICES=all reach '
            "GPUs outside DS01: remove it from daemon.json (DS01 hands out GPUs with --gpus)"
        )
    return merged, warnings


def _build_parent(
    current: dict[str, Any], fragment: dict[str, Any], driver: str, warnings: list[str]
) -> str:
    """dockerd's cgroup-parent: DS01's build cgroup, where BuildKit runs every build.

    dockerd 20.10 puts every BuildKit RUN step below it (``<parent>/buildkit/<id>``) and ds01d
    caps that with the policy's ``builds``. With the systemd driver it must be a slice; the
    names are policy/build_cgroup.py's (this script runs before DS01 is installed).
    """
    wanted = "ds01_builds.slice" if driver == "systemd" else fragment["cgroup-parent"]
    old = current.get("cgroup-parent")
    if old not in (None, "", wanted):
        warnings.append(
            f'"cgroup-parent": "{old}" replaced by "{wanted}": DS01 caps BuildKit builds there; '
            "containers created without --cgroup-parent (admins', root's) now land there too"
        )
    return wanted


def merge_daemon_json(root: str, manifest_path: str, fragment_path: str) -> bool:
    current = read_daemon_json(root)
    merged, warnings = merged_daemon_json(current or {}, load(fragment_path))
    for warning in warnings:
        print(f"WARNING: {warning}", file=sys.stderr)
    if current is not None and merged == current:
        return False
    full = root + DAEMON_JSON
    mode = os.stat(full).st_mode & 0o7777 if current is not None else 0o644
    data = (json.dumps(merged, indent=2) + "\n").encode()
    note(root, manifest_path, DAEMON_JSON)
    write_atomic(full, data, mode)
    record_written(manifest_path, DAEMON_JSON, hashlib.sha256(data).hexdigest())
    return True


def preflight(root: str, fragment_path: str) -> None:
    """Every refusal, before the first change."""
    merged_daemon_json(read_daemon_json(root) or {}, load(fragment_path))
    hosts = default_docker_hosts(root)
    if hosts:
        raise Refusal(
            f"DOCKER_OPTS in {DEFAULT_DOCKER} sets -H {' -H '.join(hosts)}: dockerd would not start "
            'with both -H and "hosts" in daemon.json. To fix: remove the -H flags from '
            "DOCKER_OPTS, then re-run."
        )
    docker_exec_start(root)


# ----------------------------------------------------------------------------- restore


def verify_backups(root: str, manifest_path: str) -> None:
    """Every backup is there and unchanged, or nothing may be restored."""
    for path, entry in sorted(load(manifest_path)["files"].items()):
        if entry["existed"] and entry["kind"] == "file":
            backup = root + entry["backup"]
            if not os.path.isfile(backup) or sha256(backup) != entry["sha256"]:
                raise Refusal(
                    f"the backup {entry['backup']} of {path} is missing or was changed since the "
                    "install; nothing was restored. To fix: put the original back there."
                )


def restore(root: str, manifest_path: str, purge: bool) -> None:
    manifest = load(manifest_path)
    keep = () if purge else tuple(manifest.get("keep_unless_purge", KEEP_UNLESS_PURGE))
    verify_backups(root, manifest_path)
    for path, entry in sorted(manifest["files"].items()):
        full = root + path
        if path == DAEMON_JSON and os.path.isfile(full):
            written = entry.get("written_sha256")
            if written and sha256(full) != written:
                saved = full + ".ds01-uninstall"
                shutil.copy2(full, saved)
                print(
                    f"{path} was edited after the install: it is restored to what it was "
                    f"before; the edited version is kept as {path}.ds01-uninstall"
                )
        if entry["existed"] and entry["kind"] == "symlink":
            if os.path.lexists(full):
                os.unlink(full)
            os.symlink(entry["target"], full)
        elif entry["existed"]:
            backup = root + entry["backup"]
            tmp = f"{full}.ds01-restore"
            shutil.copy2(backup, tmp)  # content, mode, times
            os.chown(tmp, entry["uid"], entry["gid"])
            os.chmod(tmp, entry["mode"])
            os.replace(tmp, full)
        elif path.startswith(keep):
            print(f"kept {path} (--purge removes it)")
            continue
        elif os.path.lexists(full):
            os.unlink(full)
        print(f"restored {path}" if entry["existed"] else f"removed {path}")
    venv = manifest.get("venv")
    if venv and not venv["existed"] and os.path.isdir(root + venv["path"]):
        shutil.rmtree(root + venv["path"])
        print(f"removed {venv['path']}")
    shutil.rmtree(root + BACKUP_DIR, ignore_errors=True)
    os.remove(manifest_path)
    created = [d for d, existed in manifest["dirs"].items() if not existed]
    for directory in sorted(created, key=len, reverse=True):  # deepest first
        full = root + directory
        if not os.path.isdir(full) or os.path.islink(full):
            continue
        if purge and directory.startswith(STATE_KEPT):
            shutil.rmtree(full)  # ds01d's audit log and job mapping
        elif not os.listdir(full):
            os.rmdir(full)


# ----------------------------------------------------------------------------- main


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    command, root, *rest = argv
    root = root.rstrip("/")
    try:
        if command == "preflight":
            preflight(root, rest[0])
            return 0
        manifest_path, *args = rest
        changed = None
        if command == "begin":
            begin(root, manifest_path, args)
        elif command == "set-once":
            set_once(manifest_path, args[0], json.loads(args[1]))
        elif command == "get":
            print(json.dumps(load(manifest_path).get(args[0])))
        elif command == "put":
            changed = put(root, manifest_path, args[0], args[1], args[2], args[3:])
        elif command == "link":
            changed = link(root, manifest_path, args[0], args[1])
        elif command == "docker-dropin":
            changed = docker_dropin(root, manifest_path, args[0], args[1])
        elif command == "daemon-json":
            changed = merge_daemon_json(root, manifest_path, args[0])
        elif command == "verify":
            verify_backups(root, manifest_path)
        elif command == "restore":
            restore(root, manifest_path, args[0] == "1")
        else:
            print(f"install_helper.py: unknown command {command}", file=sys.stderr)
            return 2
    except Refusal as exc:
        print(f"REFUSED: {exc}", file=sys.stderr)
        return 3
    if changed is not None:
        print("changed" if changed else "unchanged")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
