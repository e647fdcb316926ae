"""What reaches the audit log: actions, denials, rewrites and admin actions, not routine reads."""

from __future__ import annotations

import pytest

from ds01d.observe.audit import AuditLog
from ds01d.observe.metrics import Metrics
from ds01d.observe.recorder import Recorder
from policy.decision import allow, deny, not_found
from policy.identity import Identity, direct_identity
from policy.routes import parse_route

ALICE = Identity(uid=1001, user="alice", groups=frozenset({"alice"}), home="/home/alice")
ROOT = direct_identity()
FILTERED = allow(changes=("filters label=ds01.user=alice",))


@pytest.mark.parametrize(
    ("who", "method", "target", "decision", "written"),
    [
        # routine reads change nothing: counted in metrics only
        (ALICE, "GET", "/v1.41/containers/json", allow(), False),
        (ALICE, "HEAD", "/_ping", allow(), False),
        (ROOT, "GET", "/v1.41/containers/json", allow(audited=True), False),
        (ROOT, "GET", "/v1.41/containers/abc/json", allow(audited=True), False),
        # what direct access does is recorded
        (ROOT, "POST", "/v1.41/containers/create", allow(audited=True), True),
        (ROOT, "POST", "/v1.41/containers/abc/stop", allow(audited=True), True),
        # an admin reading someone else's container through the gateway
        (ALICE, "GET", "/v1.41/containers/abc/json", allow(audited=True), True),
        # the owner filter on a list is routine too
        (ALICE, "GET", "/v1.41/containers/json", FILTERED, False),
        # refusals are recorded, even of reads
        (ALICE, "GET", "/v1.41/containers/abc/json", not_found("container", "abc"), True),
        (ROOT, "GET", "/v1.41/containers/json", deny("direct_access", "off"), True),
        (ALICE, "POST", "/v1.41/containers/abc/start", allow(), True),
    ],
)
def test_what_the_audit_log_keeps(tmp_path, who, method, target, decision, written):
    audit = AuditLog(tmp_path / "audit.jsonl")
    recorder = Recorder(Metrics(), audit)
    door = "authz" if who.is_direct else "gateway"
    recorder.decision(door, parse_route(method, target), who, decision, 0.001)
    audit.flush()
    assert bool(list(audit.read_events())) == written
    audit.close()
