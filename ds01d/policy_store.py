"""The live policy: loaded from a file (or the built-in default), reloaded on change or SIGHUP.

A new policy that does not validate is rejected and the old one stays; the rejection is kept
(``rejected``) until a valid policy loads, so ``ds01 status`` and ``ds01 doctor`` can say so.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pwd
import time
from collections.abc import Callable
from dataclasses import dataclass

from ds01d.identities import identity_for_uid
from policy.identity import Identity
from policy.limits import Limits, resolve
from policy.loader import PolicyDocument, PolicyError, default_policy_text, parse_policy

log = logging.getLogger("ds01.policy")


@dataclass(frozen=True)
class Rejection:
    """A reload that failed: the policy in force is still the previous one."""

    error: str  # ``file:line key: reason`` of the first problem
    at: float  # when (epoch seconds)


class PolicyStore:
    def __init__(
        self, path: str | None, on_reload: Callable[[bool, str], None] | None = None
    ) -> None:
        self.path = path
        self._on_reload = on_reload or (lambda ok, detail: None)
        self._mtime: float | None = None
        self._limits: dict[Identity, Limits] = {}  # resolved once per identity and policy
        self.document, self.sha256 = self._read()  # the first load must succeed: fail to start
        self.loaded_at = time.time()
        self.rejected: Rejection | None = None

    def _read(self) -> tuple[PolicyDocument, str]:
        if self.path is None:
            text, source = default_policy_text(), "built-in default policy"
        else:
            with open(self.path, encoding="utf-8") as f:
                text = f.read()
            source = self.path
            self._mtime = os.stat(self.path).st_mtime
        return parse_policy(text, source), hashlib.sha256(text.encode()).hexdigest()

    def reload(self) -> bool:
        """Load the file again; keep the old policy if the new one is invalid."""
        try:
            document, sha = self._read()
        except (OSError, PolicyError) as exc:
            log.error("policy reload rejected, keeping the previous policy: %s", exc)
            self.rejected = Rejection(str(exc), time.time())
            self._on_reload(False, str(exc))
            return False
        self.document, self.sha256 = document, sha
        self.loaded_at, self.rejected = time.time(), None
        self._limits = {}
        log.info("policy reloaded from %s (sha256 %s)", document.source, sha[:12])
        self._on_reload(True, sha)
        return True

    def changed_on_disk(self) -> bool:
        if self.path is None:
            return False
        try:
            return os.stat(self.path).st_mtime != self._mtime
        except OSError:
            return False

    def limits(self, identity: Identity) -> Limits:
        limits = self._limits.get(identity)
        if limits is None:
            if len(self._limits) > 10_000:  # uids come and go; never grow without bound
                self._limits.clear()
            limits = self._limits[identity] = resolve(self.document, identity)
        return limits

    def limits_for_user(self, user: str, uid: int | None = None) -> Limits:
        """The limits of a user known by name (and uid, e.g. from container labels), as the
        gateway would resolve them: their Unix groups (NSS) included, so ``unix_groups:``
        mappings count in every admin view, the GPU broker and the lifecycle alike."""
        try:
            entry = pwd.getpwuid(uid) if uid is not None else pwd.getpwnam(user)
        except (KeyError, ValueError):  # not a Unix user (or a name with a NUL byte)
            return self.limits(Identity(uid=uid, user=user))
        if entry.pw_name != user:  # the uid was reused: trust the recorded name
            return self.limits(Identity(uid=uid, user=user))
        return self.limits(identity_for_uid(entry.pw_uid))

    @property
    def cgroup_driver(self) -> str:
        return self.document.data.get("cgroup_driver", "cgroupfs")
