"""A TLS client-certificate user's decision: their policy, minus anything that needs a rewrite.

Such a user reaches dockerd over TCP, where only the AuthZ plugin sees the request, and a
plugin can only allow or deny what dockerd will run unchanged. So a decision the gateway
would carry out by changing the request (a create's owner labels and limits, a list's owner
filter, a GPU grant, a screened read) is refused here with the way round: the gateway socket.
"""

from __future__ import annotations

from .decision import Decision, deny
from .routes import Route

GATEWAY_FIX = "use the DS01 gateway socket (unix:///var/run/docker.sock) on the server"


def without_rewrite(decision: Decision, route: Route | None) -> Decision:
    """``decision`` if dockerd may run the request unchanged; else a refusal naming the way."""
    if not decision.allowed or not needs_rewrite(decision):
        return decision
    what = f"{route.method} {route.endpoint}" if route is not None else "this request"
    return deny(
        "tls_needs_gateway",
        f"{what} must be adjusted by DS01 for your account, which a TLS connection to "
        "dockerd does not allow",
        GATEWAY_FIX,
    )


def needs_rewrite(decision: Decision) -> bool:
    """Whether the gateway would forward something other than the request as sent."""
    return (
        decision.body is not None
        or decision.query is not None
        or decision.params is not None  # a name or ID prefix: dockerd would resolve it again
        or decision.gpu_request is not None
        or decision.decide_on_answer
    )
