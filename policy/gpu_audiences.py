"""Who may use which GPUs under a policy: the summary placement uses to leave others options.

Pure: a policy document in, ``allocator.placement.Audience`` values out. Every identity the
policy names (group members, Unix groups, ``users:`` entries, and everyone else under the
defaults) is resolved exactly as the daemon resolves a user, so a researcher mapped by
``unix_groups:`` counts like one listed by name.
"""

from __future__ import annotations

from collections.abc import Iterator

from allocator.placement import Audience, audiences
from allocator.quota import Quota

from .identity import Identity
from .limits import resolve
from .loader import PolicyDocument


def gpu_audiences(doc: PolicyDocument) -> tuple[Audience, ...]:
    """The distinct GPU rights of everyone the policy ``doc`` names (placement's ``others``)."""
    return audiences(Quota.from_limits(resolve(doc, i)) for i in _named(doc))


def _named(doc: PolicyDocument) -> Iterator[Identity]:
    yield Identity(uid=None, user="")  # anyone under the defaults alone
    for group in (doc.data.get("groups") or {}).values():
        for member in group.get("members") or []:
            yield Identity(uid=None, user=member)
        for unix_group in group.get("unix_groups") or []:
            yield Identity(uid=None, user="", groups=frozenset({unix_group}))
    for user in doc.data.get("users") or {}:
        yield Identity(uid=None, user=user)
