"""Builds a tiny busybox rootfs in Python and `docker import`s it as the test image."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import tarfile
from pathlib import Path

from tests.harness.dockerd import docker

BUSYBOX_TAG = "ds01-busybox:latest"
BUSYBOX_SOURCE = "/bin/busybox"

APPLETS = (
    "sh", "ls", "cat", "echo", "sleep", "env", "id", "touch", "dd", "head", "wc", "mkdir",
    "rm", "true", "false", "yes", "top", "ps", "grep", "printenv", "stat", "cut", "tail",
    "seq", "sync", "hostname", "whoami",
    # A few more that tests and dev containers commonly reach for.
    "cp", "mv", "ln", "chmod", "kill", "nproc", "uname", "date", "sed", "awk", "tr", "find",
    "xargs", "test", "[", "printf", "basename", "dirname", "timeout", "free", "df", "mount",
    "tee", "sort", "uniq", "which", "ash", "less", "vi",
)  # fmt: skip

_PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
_GROUP = "root:x:0:\nnobody:x:65534:\n"
_OS_RELEASE = 'NAME="DS01 busybox test image"\nID=busybox\nVERSION_ID=1\n'
_MTIME = 1_700_000_000  # fixed, so the tarball is reproducible

# Debian's busybox-static 1.35 has no printenv applet; this keeps its semantics
# (value per name, exit 1 if any is unset, whole env without arguments).
_PRINTENV = r"""#!/bin/sh
[ $# -eq 0 ] && exec env
rc=0
for name in "$@"; do
  case $name in
    "" | [!A-Za-z_]* | *[!A-Za-z0-9_]*) rc=1; continue ;;
  esac
  if eval "[ -n \"\${$name+set}\" ]"; then
    eval "printf '%s\n' \"\$$name\""
  else
    rc=1
  fi
done
exit $rc
"""


def _is_static_elf(path: str) -> bool:
    """True if `path` is an ELF without a PT_INTERP segment (no dynamic loader needed)."""
    with open(path, "rb") as fh:
        ident = fh.read(64)
        if ident[:4] != b"\x7fELF":
            return False
        is64 = ident[4] == 2
        endian = "<" if ident[5] == 1 else ">"
        if is64:
            phoff, phentsize, phnum = (
                struct.unpack_from(endian + "Q", ident, 32)[0],
                *struct.unpack_from(endian + "HH", ident, 54),
            )
        else:
            phoff, phentsize, phnum = (
                struct.unpack_from(endian + "I", ident, 28)[0],
                *struct.unpack_from(endian + "HH", ident, 42),
            )
        fh.seek(phoff)
        table = fh.read(phentsize * phnum)
    pt_interp = 3
    return all(
        struct.unpack_from(endian + "I", table, i * phentsize)[0] != pt_interp for i in range(phnum)
    )


def _busybox_applets(busybox: str) -> set[str] | None:
    """Applets this busybox build provides, or None if it cannot tell us."""
    try:
        out = subprocess.run(
            [busybox, "--list"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return set(out.split())


def _add_dir(tar: tarfile.TarFile, name: str, mode: int = 0o755) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = mode
    info.mtime = _MTIME
    tar.addfile(info)


def _add_file(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    info.mtime = _MTIME
    tar.addfile(info, io.BytesIO(data))


def _add_symlink(tar: tarfile.TarFile, name: str, target: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    info.mode = 0o777
    info.mtime = _MTIME
    tar.addfile(info)


def build_busybox_rootfs(busybox: str = BUSYBOX_SOURCE) -> bytes:
    """A rootfs tarball: static busybox, applet symlinks, /etc/passwd+group, /tmp (1777)."""
    if not os.path.exists(busybox):
        raise FileNotFoundError(f"{busybox} missing; install busybox-static (setup-host.sh)")
    if not _is_static_elf(busybox):
        # A dynamic busybox would need the host's libc inside the image.
        raise RuntimeError(f"{busybox} is not statically linked; install busybox-static")
    data = Path(busybox).read_bytes()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("bin", "etc", "root", "home", "usr", "usr/bin", "sbin", "var", "dev",
                  "proc", "sys", "run", "mnt", "workspace"):  # fmt: skip
            _add_dir(tar, d, 0o700 if d == "root" else 0o755)
        _add_dir(tar, "tmp", 0o1777)
        _add_dir(tar, "var/tmp", 0o1777)
        _add_file(tar, "bin/busybox", data, 0o755)
        available = _busybox_applets(busybox)
        for applet in dict.fromkeys(APPLETS):
            if available is None or applet in available:
                _add_symlink(tar, f"bin/{applet}", "busybox")
            elif applet == "printenv":
                _add_file(tar, "bin/printenv", _PRINTENV.encode(), 0o755)
        # Scripts with `#!/usr/bin/env sh` must work too.
        _add_symlink(tar, "usr/bin/env", "../../bin/busybox")
        _add_file(tar, "etc/passwd", _PASSWD.encode())
        _add_file(tar, "etc/group", _GROUP.encode())
        _add_file(tar, "etc/os-release", _OS_RELEASE.encode())
    return buf.getvalue()


def import_busybox_image(host: str, tag: str = BUSYBOX_TAG, busybox: str = BUSYBOX_SOURCE) -> str:
    """Import the busybox rootfs into the daemon at `host` as `tag` (skips if present)."""
    if docker("image", "inspect", tag, host=host).returncode == 0:
        return tag
    docker(
        "import",
        "--change",
        'CMD ["/bin/sh"]',
        "-",
        tag,
        host=host,
        input=build_busybox_rootfs(busybox),
        check=True,
    )
    return tag
