"""The ``ds01.*`` container label schema: the one place its names and value formats live.

Docker is the source of truth: these labels on a container are what the ledger is rebuilt from.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping

from .timestamps import parse_docker_time

LABEL_USER = "ds01.user"
LABEL_UID = "ds01.uid"
LABEL_GROUP = "ds01.group"
LABEL_DEVICES = "ds01.devices"  # comma-separated GPU-/MIG- UUIDs, in the order granted
LABEL_GPUEQ = "ds01.gpueq"  # GPU-equivalents of those devices, informative (recomputed)
LABEL_ALLOCATED_AT = "ds01.allocated_at"  # ISO 8601 UTC, when the devices were granted
LABEL_WAIT = "ds01.wait"  # set by the user: how long a create may wait for a GPU (``10m``)

LABEL_PREFIX = "ds01."
# Every other ``ds01.*`` label is written by DS01 only; the gateway drops user-set copies.
USER_SETTABLE_LABELS = frozenset({LABEL_WAIT})
# What DS01 writes on every container it creates, empty when it has no value: an image's own
# ``LABEL ds01.devices=...`` would otherwise show through on the container (dockerd merges the
# image's labels under the create's).
DS01_WRITTEN_LABELS = (
    LABEL_USER,
    LABEL_UID,
    LABEL_GROUP,
    LABEL_DEVICES,
    LABEL_GPUEQ,
    LABEL_ALLOCATED_AT,
    LABEL_WAIT,
)


def format_devices(uuids: Iterable[str]) -> str:
    """The ``ds01.devices`` value for ``uuids``."""
    return ",".join(uuids)


def parse_devices(value: str | None) -> tuple[str, ...]:
    """The UUIDs in a ``ds01.devices`` value; empty for a missing or blank label."""
    if not value:
        return ()
    return tuple(part.strip() for part in value.split(",") if part.strip())


def format_gpueq(value: float) -> str:
    """A GPU-equivalent amount for labels and messages: ``0.43``, ``1``, ``2.5``."""
    text = f"{value:.4f}".rstrip("0").rstrip(".")
    return text or "0"


def parse_gpueq(value: str | None) -> float | None:
    """The number in a ``ds01.gpueq`` value, or None when it is missing or not a number."""
    try:
        number = float(value) if value is not None else None
    except ValueError:
        return None
    return number if number is not None and math.isfinite(number) and number >= 0 else None


def format_time(epoch: float) -> str:
    """``epoch`` seconds as ISO 8601 UTC with a ``Z``, readable in ``docker inspect``."""
    whole = int(epoch)
    fraction = f"{epoch - whole:.3f}"[1:]  # ".123": milliseconds keep ordering exact enough
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + fraction + "Z"


def parse_time(value: str | None) -> float | None:
    """Epoch seconds from a ``format_time`` value (or plain seconds); None if unreadable.

    The ISO form is read by the one parser of Docker's timestamps, whose format it is.
    """
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        return parse_docker_time(value.strip())


def allocation_labels(
    *, user: str, uid: int | None, group: str, devices: Iterable[str], gpueq: float, at: float
) -> dict[str, str]:
    """The labels the gateway puts on a container it created with these devices."""
    labels = {
        LABEL_USER: user,
        LABEL_GROUP: group,
        LABEL_DEVICES: format_devices(devices),
        LABEL_GPUEQ: format_gpueq(gpueq),
        LABEL_ALLOCATED_AT: format_time(at),
    }
    if uid is not None:
        labels[LABEL_UID] = str(uid)
    return labels


def parse_uid(labels: Mapping[str, str]) -> int | None:
    """The ``ds01.uid`` label as an integer, or None."""
    try:
        return int(labels[LABEL_UID])
    except (KeyError, ValueError):
        return None
