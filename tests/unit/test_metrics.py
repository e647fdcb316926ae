"""Metrics: a scripted workload, scraped and parsed with prometheus-client's own parser."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ds01d.observe.audit import AuditLog
from ds01d.observe.metrics import Metrics, metrics_app, parse_address, serve_metrics

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(metrics: Metrics) -> Samples:
    """Every sample of a scrape, keyed by (name, labels)."""
    text = generate_latest(metrics.registry).decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def matching(samples: Samples, name: str, **labels: str) -> dict[frozenset[Any], float]:
    want = set(labels.items())
    return {k[1]: v for k, v in samples.items() if k[0] == name and want <= k[1]}


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry(), version="1.2.3")


def test_scripted_workload_counts_match(metrics: Metrics) -> None:
    """Counters and histograms after a known workload say exactly what the workload did."""
    for _ in range(3):
        metrics.record_decision("gateway", "/containers/create", True, "ok", seconds=0.0004)
    metrics.record_decision("gateway", "/containers/create", False, "quota_gpus", seconds=0.002)
    metrics.record_decision("gateway", "/containers/{id}/start", False, "not_found")
    for _ in range(5):
        metrics.record_decision("authz", "/containers/{id}/start", True, "ok", seconds=0.00008)
    metrics.record_lifecycle("warn", "idle")
    metrics.record_lifecycle("stop", "idle")
    metrics.record_lifecycle("stop", "idle")
    metrics.record_lifecycle("stop", "max_runtime")
    metrics.record_lifecycle("remove", "container_hold")
    metrics.record_policy_reload(True)
    metrics.record_policy_reload(False)
    metrics.record_policy_reload(True)
    metrics.observe_queue_wait(42.0)
    metrics.observe_queue_wait(3000.0)
    metrics.set_queue_length(2)
    metrics.audit_dropped()

    s = scrape(metrics)
    d = "ds01_decisions_total"
    assert (
        value(s, d, door="gateway", endpoint="/containers/create", result="allow", reason="ok") == 3
    )
    assert (
        value(
            s, d, door="gateway", endpoint="/containers/create", result="deny", reason="quota_gpus"
        )
        == 1
    )
    assert (
        value(
            s,
            d,
            door="gateway",
            endpoint="/containers/{id}/start",
            result="deny",
            reason="not_found",
        )
        == 1
    )
    assert (
        value(s, d, door="authz", endpoint="/containers/{id}/start", result="allow", reason="ok")
        == 5
    )
    assert sum(matching(s, d).values()) == 10

    gw = "ds01_gateway_request_duration_seconds"
    assert value(s, gw + "_count", endpoint="/containers/create") == 4
    assert value(s, gw + "_bucket", endpoint="/containers/create", le="0.0005") == 3
    assert value(s, gw + "_bucket", endpoint="/containers/create", le="0.0025") == 4
    assert value(s, gw + "_count", endpoint="/containers/{id}/start") is None  # no seconds given
    az = "ds01_authz_request_duration_seconds"
    assert value(s, az + "_count", endpoint="/containers/{id}/start") == 5
    assert value(s, az + "_bucket", endpoint="/containers/{id}/start", le="0.0001") == 5

    la = "ds01_lifecycle_actions_total"
    assert value(s, la, action="stop", reason="idle") == 2
    assert value(s, la, action="stop", reason="max_runtime") == 1
    assert value(s, la, action="warn", reason="idle") == 1
    assert value(s, la, action="remove", reason="container_hold") == 1
    assert value(s, "ds01_policy_reloads_total", result="ok") == 2
    assert value(s, "ds01_policy_reloads_total", result="error") == 1
    assert value(s, "ds01_queue_wait_seconds_count") == 2
    assert value(s, "ds01_queue_wait_seconds_bucket", le="60.0") == 1
    assert value(s, "ds01_queue_length") == 2
    assert value(s, "ds01_audit_dropped_total") == 1
    assert value(s, "ds01_build_info", version="1.2.3") == 1


def test_counters_with_known_labels_start_at_zero(metrics: Metrics) -> None:
    """Reload results and audit drops exist at 0 before anything happened (rate() works)."""
    s = scrape(metrics)
    assert value(s, "ds01_policy_reloads_total", result="ok") == 0
    assert value(s, "ds01_policy_reloads_total", result="error") == 0
    assert value(s, "ds01_audit_dropped_total") == 0


def test_device_snapshot_gives_counts_by_state_and_holders(metrics: Metrics) -> None:
    """set_devices feeds both the per-state counts and one holder_info per held device."""
    metrics.set_devices(
        [
            {
                "device": "GPU-aaaa",
                "kind": "gpu",
                "state": "allocated",
                "profile": "H200",
                "user": "rita",
                "container": "train",
            },
            {"device": "GPU-bbbb", "kind": "gpu", "state": "free", "profile": "H200"},
            {
                "device": "MIG-cccc",
                "kind": "mig",
                "state": "held",
                "profile": "1g.18gb",
                "user": "alice",
                "container": "nb",
            },
            {
                "device": "MIG-dddd",
                "kind": "mig",
                "state": "reserved",
                "profile": "1g.18gb",
                "user": "bob",
                "container": None,
            },
            {"device": "MIG-eeee", "kind": "mig", "state": "free", "profile": "1g.18gb"},
            {"device": "GPU-ffff", "kind": "gpu", "state": "unusable", "profile": "H200"},
        ]
    )
    s = scrape(metrics)
    assert value(s, "ds01_devices", state="allocated", kind="gpu") == 1
    assert value(s, "ds01_devices", state="free", kind="gpu") == 1
    assert value(s, "ds01_devices", state="unusable", kind="gpu") == 1
    assert value(s, "ds01_devices", state="held", kind="mig") == 1
    assert value(s, "ds01_devices", state="reserved", kind="mig") == 1
    assert value(s, "ds01_devices", state="free", kind="mig") == 1
    assert value(s, "ds01_devices", state="allocated", kind="mig") == 0  # zeros are exported
    assert len(matching(s, "ds01_devices")) == 10  # 5 states x 2 kinds, no "other"
    holders = matching(s, "ds01_device_holder_info")
    assert holders == {
        frozenset(
            {
                "device": "GPU-aaaa",
                "kind": "gpu",
                "profile": "H200",
                "user": "rita",
                "container": "train",
                "state": "allocated",
            }.items()
        ): 1,
        frozenset(
            {
                "device": "MIG-cccc",
                "kind": "mig",
                "profile": "1g.18gb",
                "user": "alice",
                "container": "nb",
                "state": "held",
            }.items()
        ): 1,
        frozenset(
            {
                "device": "MIG-dddd",
                "kind": "mig",
                "profile": "1g.18gb",
                "user": "bob",
                "container": "",
                "state": "reserved",
            }.items()
        ): 1,
    }

    # A new snapshot replaces the old one: released devices disappear from holder_info.
    metrics.set_devices([{"device": "GPU-aaaa", "kind": "gpu", "state": "free"}])
    s = scrape(metrics)
    assert matching(s, "ds01_device_holder_info") == {}
    assert value(s, "ds01_devices", state="free", kind="gpu") == 1
    assert value(s, "ds01_devices", state="allocated", kind="gpu") == 0


def test_usage_containers_and_policy_snapshots(metrics: Metrics) -> None:
    """GPU-equivalents per user, containers per user/state and the policy info."""
    metrics.set_gpu_usage(
        [
            {"user": "alice", "group": "students", "gpu_equivalents": 2 / 7},
            {"user": "rita", "group": "researchers", "gpu_equivalents": 1.0},
            {"user": "rita", "group": "researchers", "gpu_equivalents": 1.0},
        ]
    )
    metrics.set_containers(
        [
            {"user": "alice", "state": "running"},
            {"user": "alice", "state": "running"},
            {"user": "alice", "state": "exited"},
            {"user": "rita", "state": "running"},
        ]
    )
    metrics.set_policy("/etc/ds01/policy.yaml", "ab" * 32)
    s = scrape(metrics)
    assert value(s, "ds01_gpu_equivalents_held", user="alice", group="students") == pytest.approx(
        2 / 7
    )
    assert value(s, "ds01_gpu_equivalents_held", user="rita", group="researchers") == 2.0
    assert value(s, "ds01_containers", user="alice", state="running") == 2
    assert value(s, "ds01_containers", user="alice", state="exited") == 1
    assert value(s, "ds01_containers", user="rita", state="running") == 1
    assert value(s, "ds01_policy_info", source="/etc/ds01/policy.yaml", sha256="ab" * 32) == 1

    metrics.set_policy("/etc/ds01/policy.yaml", "cd" * 32)  # a reload replaces, not adds
    metrics.set_gpu_usage([])
    s = scrape(metrics)
    assert len(matching(s, "ds01_policy_info")) == 1
    assert matching(s, "ds01_gpu_equivalents_held") == {}


def test_label_cardinality_is_bounded(metrics: Metrics) -> None:
    """Raw paths and unbounded reason codes cannot grow the series without limit."""
    small = Metrics(CollectorRegistry(), max_label_values=3)
    for i in range(10):
        small.record_decision("gateway", f"/containers/{i:064x}/start", False, f"reason{i}")
    small.record_decision("gateway", "containers/create", True, "ok")  # not a template
    small.record_decision("sideways", "/_ping", True, "ok")  # not a door
    small.record_lifecycle("explode", "idle")
    s = scrape(small)
    decisions = matching(s, "ds01_decisions_total")
    endpoints = {dict(k)["endpoint"] for k in decisions}
    reasons = {dict(k)["reason"] for k in decisions}
    assert len(endpoints) <= 4 and "other" in endpoints
    assert len(reasons) <= 4 and "other" in reasons
    assert sum(decisions.values()) == 12  # nothing is lost, only folded
    assert value(s, "ds01_lifecycle_actions_total", action="other", reason="idle") == 1
    doors = {dict(k)["door"] for k in decisions}
    assert doors == {"gateway", "other"}


def test_audit_drops_reach_the_counter(tmp_path: Any, metrics: Metrics) -> None:
    """AuditLog(on_drop=metrics.audit_dropped) counts every dropped event."""
    log = AuditLog(tmp_path / "audit.jsonl", on_drop=metrics.audit_dropped)
    log.close()
    for _ in range(3):
        log.record("decision", user="a", uid=1)
    assert value(scrape(metrics), "ds01_audit_dropped_total") == 3


def test_two_instances_on_their_own_registries_do_not_clash() -> None:
    """Tests (and embedders) can make as many Metrics as they like."""
    a, b = Metrics(CollectorRegistry()), Metrics(CollectorRegistry())
    a.record_policy_reload(True)
    assert value(scrape(b), "ds01_policy_reloads_total", result="ok") == 0


def test_metric_names_lists_every_exposed_series_name(metrics: Metrics) -> None:
    """metric_names() includes suffixed names, and every scraped sample name is in it."""
    names = metrics.metric_names()
    for expected in (
        "ds01_decisions_total",
        "ds01_authz_request_duration_seconds_bucket",
        "ds01_gateway_request_duration_seconds_sum",
        "ds01_queue_wait_seconds_count",
        "ds01_device_holder_info",
        "ds01_devices",
        "ds01_gpu_equivalents_held",
        "ds01_containers",
        "ds01_policy_info",
        "ds01_build_info",
        "ds01_audit_dropped_total",
        "ds01_lifecycle_actions_total",
        "ds01_policy_reloads_total",
        "ds01_queue_length",
    ):
        assert expected in names
    metrics.record_decision("authz", "/_ping", True, "ok", seconds=0.001)
    metrics.set_devices([{"device": "GPU-1", "kind": "gpu", "state": "allocated", "user": "u"}])
    assert {name for name, _ in scrape(metrics)} <= names


async def test_metrics_endpoint_serves_the_registry(aiohttp_client: Any, metrics: Metrics) -> None:
    """GET /metrics returns the text format that prometheus-client's parser reads."""
    metrics.record_decision("gateway", "/containers/create", False, "quota_gpus")
    client = await aiohttp_client(await metrics_app(metrics))
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(await response.text())}
    (sample,) = [s for s in families["ds01_decisions"].samples if s.name.endswith("_total")]
    assert sample.labels["reason"] == "quota_gpus" and sample.value == 1
    om = await client.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert om.headers["Content-Type"].startswith("application/openmetrics-text")
    assert (await client.get("/other")).status == 404


async def test_serve_metrics_on_a_unix_socket(tmp_path: Any, metrics: Metrics) -> None:
    """serve_metrics binds the address it is given and stops on cleanup()."""
    path = tmp_path / "metrics.sock"
    runner = await serve_metrics(metrics, f"unix:{path}")
    try:
        connector = aiohttp.UnixConnector(path=str(path))
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.get("http://localhost/metrics") as response,
        ):
            assert response.status == 200
            assert "ds01_build_info" in await response.text()
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:9101", ("127.0.0.1", 9101)),
        (":9101", ("0.0.0.0", 9101)),
        ("[::1]:9101", ("::1", 9101)),
        ("unix:/run/ds01/metrics.sock", "/run/ds01/metrics.sock"),
    ],
)
def test_parse_address(address: str, expected: object) -> None:
    """The --metrics-address forms ds01d accepts."""
    assert parse_address(address) == expected


@pytest.mark.parametrize("address", ["9101", "localhost", "host:http", "host:70000", "unix:rel"])
def test_parse_address_rejects(address: str) -> None:
    """Bad addresses fail with a message naming the expected form."""
    with pytest.raises(ValueError, match=r"HOST:PORT|unix:"):
        parse_address(address)


# -- what production code feeds ------------------------------------------------------------------


async def test_every_authz_call_is_timed_ticketed_ones_too(metrics: Metrics) -> None:
    """timed_authz observes the AuthZ histogram once per call, by route, whatever answers it;
    a decision recorded for the authz door does not observe it a second time."""
    from authz_plugin.authz import AuthzAnswer, AuthzRequest
    from ds01d.observe.recorder import Recorder
    from policy.decision import allow
    from policy.identity import direct_identity
    from policy.routes import parse_route

    recorder = Recorder(metrics, None)

    async def ticketed(_: AuthzRequest) -> AuthzAnswer:  # a gateway ticket: no decision made
        return AuthzAnswer(True)

    async def decided(req: AuthzRequest) -> AuthzAnswer:  # direct access: a recorded decision
        route = parse_route(req.method, req.uri)
        recorder.decision("authz", route, direct_identity(), allow(), 0.001)
        return AuthzAnswer(True)

    start = AuthzRequest(
        user="", method="POST", uri="/v1.41/containers/abc/start", headers={}, body=None
    )
    await recorder.timed_authz(ticketed)(start)
    await recorder.timed_authz(decided)(start)
    s = scrape(metrics)
    az = "ds01_authz_request_duration_seconds_count"
    assert value(s, az, endpoint="/containers/{id}/start") == 2
    assert value(s, "ds01_gateway_request_duration_seconds_count") is None


async def test_queue_waits_are_observed_when_served_and_when_given_up(metrics: Metrics) -> None:
    """The broker reports each wait's length as it ends: served, or timed out."""
    import asyncio

    from allocator.request import GpuRequest
    from tests.unit.test_gpu_broker import NOW, broker, take_both_whole_gpus, who

    b, _ = broker()
    b.on_wait_end = metrics.observe_queue_wait
    holders = await take_both_whole_gpus(b)
    mid = b.table["mid"]  # type: ignore[attr-defined]
    wait = {"Labels": {"ds01.wait": "30s"}}  # waiting is opt-in
    waiter = asyncio.create_task(b.reserve(who("mid"), mid, GpuRequest(count=1), wait, NOW))
    await asyncio.sleep(0.01)
    b.clock.now = NOW + 20  # type: ignore[attr-defined]
    b.container_destroyed(holders[0])
    await asyncio.wait_for(waiter, 1)
    s = scrape(metrics)
    assert value(s, "ds01_queue_wait_seconds_count") == 1
    assert value(s, "ds01_queue_wait_seconds_bucket", le="15.0") == 0
    assert value(s, "ds01_queue_wait_seconds_bucket", le="30.0") == 1
    gives_up = await b.reserve(
        who("mid", 1001), mid, GpuRequest(count=1), {"Labels": {"ds01.wait": "0.05s"}}, NOW + 20
    )
    assert not gives_up.allowed  # type: ignore[union-attr]
    assert value(scrape(metrics), "ds01_queue_wait_seconds_count") == 2
