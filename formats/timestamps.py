"""Docker's timestamps (``docker inspect``'s ``Created``, ``StartedAt``, ``FinishedAt``) as epoch seconds.

One parser for every reader: the lifecycle rules (``policy.lifecycle``) and the daemon's GPU
broker (``ds01d.gpus``) read the same fields.
"""

from __future__ import annotations

import re
from datetime import datetime

_DOCKER_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$")


def parse_docker_time(text: str | None) -> float | None:
    """Epoch seconds of an inspect timestamp (``2024-05-01T12:00:00.123456789Z``).

    Docker writes ``0001-01-01T00:00:00Z`` for "never"; that, and anything unreadable, is None.
    """
    match = _DOCKER_TIME.match(text or "")
    if match is None or match.group(1).startswith("0001-"):
        return None
    whole, fraction, zone = match.groups()
    # Nanoseconds do not fit fromisoformat: microseconds are plenty for rules in seconds.
    micro = (fraction or ".0")[:7]
    try:
        moment = datetime.fromisoformat(whole + micro + ("+00:00" if zone == "Z" else zone))
    except ValueError:
        return None
    return moment.timestamp()
