"""The live policy: loaded from a file (or the built-in default), reloaded on change or SIGHUP.

A new policy that does not validate is rejected with its error logged; the old one stays.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable

from policy.identity import Identity
from policy.limits import Limits, resolve
from policy.loader import PolicyDocument, PolicyError, default_policy_text, parse_policy

log = logging.getLogger("ds01.policy")


class PolicyStore:
    def __init__(
        self, path: str | None, on_reload: Callable[[bool, str], None] | None = None
    ) -> None:
        self.path = path
        self._on_reload = on_reload or (lambda ok, detail: None)
        self._mtime: float | None = None
        self._limits: dict[Identity, Limits] = {}  # resolved once per identity and policy
        self.document, self.sha256 = self._read()  # the first load must succeed: fail to start

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
            self._on_reload(False, str(exc))
            return False
        self.document, self.sha256 = document, sha
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

    @property
    def cgroup_driver(self) -> str:
        return self.document.data.get("cgroup_driver", "cgroupfs")
