"""Published ports: what a user could bind on the host themselves, unless the policy says more.

dockerd binds published ports as root, so ``-p 1023:80`` would give a student a privileged port
they could not bind in a shell (a port other services trust). Ports below 1024 need
``allow: [low_ports]``; publishing on anything but loopback needs ``allow: [public_ports]``
(labs reach notebooks through ``ssh -L``): an unspecified host IP becomes 127.0.0.1.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from .decision import Denied, deny
from .limits import Limits

LOOPBACK = "127.0.0.1"
LOWEST_UNPRIVILEGED_PORT = 1024


def check_ports(host: dict[str, Any], limits: Limits, changes: list[str]) -> None:
    """Refuse privileged or public publishing the policy does not grant; pin the rest to loopback."""
    if limits.is_admin:
        return
    public = limits.allows("public_ports")
    if host.get("PublishAllPorts") and not public:
        raise Denied(
            deny(
                "public_ports",
                "-P/--publish-all publishes on every host interface, which is not allowed "
                f"for {limits.who()}",
                "publish each port on loopback instead: -p 127.0.0.1::PORT (then ssh -L)",
            )
        )
    bindings = host.get("PortBindings") or {}
    for container_port, entries in bindings.items():
        for entry in entries or []:
            _check_binding(container_port, entry, limits, public, changes)


def _check_binding(
    container_port: str, entry: dict[str, Any], limits: Limits, public: bool, changes: list[str]
) -> None:
    host_ip = entry.get("HostIp") or ""
    host_port = entry.get("HostPort") or ""
    low = _lowest_port(host_port)
    if low is not None and low < LOWEST_UNPRIVILEGED_PORT and not limits.allows("low_ports"):
        raise Denied(
            deny(
                "low_ports",
                f"publishing host port {host_port} is not allowed: ports below "
                f"{LOWEST_UNPRIVILEGED_PORT} are for system services",
                f"publish on a port from {LOWEST_UNPRIVILEGED_PORT} up, e.g. -p 127.0.0.1:8080:"
                f"{container_port.split('/')[0]}",
            )
        )
    if public:
        return
    if not host_ip:
        entry["HostIp"] = LOOPBACK
        changes.append(f"PortBindings {container_port} HostIp={LOOPBACK}")
    elif not _is_loopback(host_ip):
        raise Denied(
            deny(
                "public_ports",
                f"publishing on host address {host_ip} is not allowed for {limits.who()} "
                "(only loopback)",
                f"publish on 127.0.0.1 (-p 127.0.0.1:{host_port or 'PORT'}:"
                f"{container_port.split('/')[0]}) and connect with ssh -L",
            )
        )


def _lowest_port(text: str) -> int | None:
    """The lowest port of ``8080`` or ``8000-8010``; None for "any free port" (empty or 0).

    Only a lone 0 means "any free port"; a range from 0 (``0-1023``) is a range whose lowest
    port is 0, and dockerd would hand out ports from all of it."""
    first, dash, _ = text.partition("-")
    first = first.strip()
    if not first:
        return None
    if not first.isdigit():
        raise Denied(
            deny("bad_body", f"host port {text!r} is not a number", "use -p HOSTPORT:PORT", 400)
        )
    value = int(first)
    return None if value == 0 and not dash else value


def _is_loopback(text: str) -> bool:
    try:
        return ipaddress.ip_address(text.strip("[]")).is_loopback
    except ValueError:
        return False
