"""The value every decision returns: allow (maybe with a rewrite) or deny with reason and fix.

The message a user sees is built here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str = ""  # for the user: what was refused and why
    fix: str = ""  # for the user: what to do instead
    code: str = "ok"  # stable reason code, for metrics and the audit log
    status: int = 403  # HTTP status the gateway answers a denial with
    body: dict[str, Any] | None = None  # the canonical rewritten JSON body, when rewritten
    query: dict[str, list[str]] | None = None  # the rewritten query, when rewritten
    params: dict[str, str] | None = None  # path parameters to forward instead (full IDs)
    gpu_request: Any = None  # an allocator.request.GpuRequest to satisfy before forwarding
    changes: tuple[str, ...] = ()  # what the rewrite changed, for the audit log
    audited: bool = False  # an admin acting on someone else's object, or direct access
    # Allowed so far, but the owner check waits for dockerd's answer (State.target_in_answer):
    # the caller must decide again with the object that answer describes before relaying it.
    decide_on_answer: bool = False
    # For the log and the audit only, never shown to the user: an internal error's cause.
    detail: str = ""

    @property
    def message(self) -> str:
        """The one line the user reads (after Docker's "Error response from daemon: ")."""
        if self.allowed:
            return ""
        if self.code == "not_found":  # another user's object: answer as dockerd would
            return self.reason
        text = f"ds01: {self.reason}"
        return f"{text}. To fix: {self.fix}" if self.fix else text


def allow(**kwargs: Any) -> Decision:
    return Decision(allowed=True, **kwargs)


def deny(code: str, reason: str, fix: str = "", status: int = 403) -> Decision:
    return Decision(allowed=False, code=code, reason=reason, fix=fix, status=status)


def not_found(kind: str, ref: str) -> Decision:
    """Someone else's object is denied exactly as if it did not exist."""
    return Decision(allowed=False, code="not_found", reason=f"No such {kind}: {ref}", status=404)


@dataclass(frozen=True)
class Denied(Exception):
    """Raised inside the engine to abort with a decision; caught at the top of ``decide``."""

    decision: Decision = field(default_factory=lambda: deny("internal", "denied"))
