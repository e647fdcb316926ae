"""The Grafana dashboard and Prometheus example: they load, and query only metrics we export."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from ds01d.observe.metrics import Metrics

PACKAGING = Path(__file__).parent.parent.parent / "packaging"
METRIC = re.compile(r"\bds01_[a-z_]+")


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads((PACKAGING / "grafana-dashboard.json").read_text())


def all_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # panels inside collapsed rows
    return out


def exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    found = [
        (panel["title"], target["expr"])
        for panel in all_panels(dashboard)
        for target in panel.get("targets", [])
    ]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            found.append((f"${variable['name']}", query["query"]))
    return found


def test_dashboard_identity(dashboard: dict[str, Any]) -> None:
    """A stable uid, a recent schema version and a selectable Prometheus data source."""
    assert dashboard["uid"] == "ds01"
    assert 36 <= dashboard["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in all_panels(dashboard):
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def test_panels_have_unique_ids_and_do_not_overlap(dashboard: dict[str, Any]) -> None:
    """Every panel has its own id and a gridPos inside the 24-column grid, without overlaps."""
    panels = all_panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        pos = panel["gridPos"]
        assert {"x", "y", "w", "h"} <= set(pos)
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24 and pos["h"] > 0
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_every_queried_metric_exists(dashboard: dict[str, Any]) -> None:
    """Each ds01_* name in a PromQL expression is a series a Metrics() registry exposes."""
    exposed = Metrics(CollectorRegistry()).metric_names()
    used = set()
    for title, expr in exprs(dashboard):
        for name in METRIC.findall(expr):
            assert name in exposed, f"panel {title!r} queries {name}, which ds01d does not export"
            used.add(name)
    # Histograms are read through their buckets, never through the bare family name.
    assert "ds01_authz_request_duration_seconds" not in used
    assert "ds01_authz_request_duration_seconds_bucket" in used


def test_the_issue_s_panels_are_there(dashboard: dict[str, Any]) -> None:
    """Who holds what, devices, usage, queue, idle stops, decisions, latency, reloads."""
    text = json.dumps([expr for _, expr in exprs(dashboard)])
    for name in (
        "ds01_device_holder_info",
        "ds01_devices",
        "ds01_gpu_equivalents_held",
        "ds01_queue_length",
        "ds01_queue_wait_seconds_bucket",
        "ds01_lifecycle_actions_total",
        "ds01_decisions_total",
        "ds01_authz_request_duration_seconds_bucket",
        "ds01_gateway_request_duration_seconds_bucket",
        "ds01_policy_reloads_total",
    ):
        assert name in text
    assert "histogram_quantile(0.95" in text  # queue wait p95
    assert "histogram_quantile(0.99" in text and "histogram_quantile(0.5" in text
    holders = [p for p in all_panels(dashboard) if p["title"] == "Who holds what"]
    assert holders and holders[0]["type"] == "table"


def test_every_metric_we_export_is_on_the_dashboard(dashboard: dict[str, Any]) -> None:
    """Nothing exported is forgotten by the dashboard (bar the _created timestamps)."""
    text = " ".join(expr for _, expr in exprs(dashboard))
    families = {
        re.sub(r"_(bucket|count|sum|total)$", "", name)
        for name in Metrics(CollectorRegistry()).metric_names()
        if not name.endswith("_created")
    }
    missing = {f for f in families if f not in text}
    assert missing == set()


def test_prometheus_scrape_example() -> None:
    """The scrape example is YAML with a ds01 job reading /metrics."""
    config = yaml.safe_load((PACKAGING / "prometheus-scrape.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["ds01"]["metrics_path"] == "/metrics"
    targets = jobs["ds01"]["static_configs"][0]["targets"]
    assert all(re.fullmatch(r"[\w.\-]+:\d+", t) for t in targets)


def test_promql_parses_and_scrape_config_is_valid(
    dashboard: dict[str, Any], tmp_path: Path
) -> None:
    """promtool accepts the scrape example and every dashboard expression (as recording rules)."""
    assert shutil.which("promtool"), (
        "promtool missing: scripts/setup-host.sh installs Debian's prometheus"
    )
    grafana_only = {"$__rate_interval": "1m", "$__range": "1h", "$instance": ".*"}
    rules = []
    for n, (_, expr) in enumerate(exprs(dashboard)):
        for variable, value in grafana_only.items():
            expr = expr.replace(variable, value)
        if expr.startswith("label_values("):
            continue  # Grafana's own function, not PromQL
        rules.append({"record": f"ds01:dashboard_check:{n}", "expr": expr})
    rules_file = tmp_path / "rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    for args in (
        ["check", "rules", str(rules_file)],
        ["check", "config", str(PACKAGING / "prometheus-scrape.yml")],
    ):
        result = subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr


def test_scrape_example_reads_the_port_the_unit_serves() -> None:
    """packaging/prometheus-scrape.yml scrapes the --metrics-address of packaging/ds01d.service."""
    unit = (PACKAGING / "ds01d.service").read_text()
    served = re.search(r"--metrics-address\s+(\S+)", unit)
    assert served, "ds01d.service starts ds01d without --metrics-address"
    config = yaml.safe_load((PACKAGING / "prometheus-scrape.yml").read_text())
    (ds01,) = [job for job in config["scrape_configs"] if job["job_name"] == "ds01"]
    assert ds01["static_configs"][0]["targets"] == [served.group(1)]


# What feeds each metric family in production code: every call must appear there (the
# definitions in ds01d/observe/metrics.py do not count). A new metric needs a row here.
FEEDERS: dict[str, tuple[str, ...]] = {
    "ds01_decisions": (r"\.record_decision\(",),
    "ds01_authz_request_duration_seconds": (r"\.timed_authz\b", r'observe_latency\(\s*"authz"'),
    "ds01_gateway_request_duration_seconds": (r"\.record_decision\(", r"\bseconds\b"),
    "ds01_queue_length": (r"\.set_queue_length\(",),
    "ds01_queue_wait_seconds": (r"on_wait_end\s*=\s*self\.metrics\.observe_queue_wait",),
    "ds01_lifecycle_actions": (r'"record_lifecycle"|\.record_lifecycle\(',),
    "ds01_policy_reloads": (r"\.record_policy_reload\(",),
    "ds01_audit_dropped": (r"on_drop\s*=\s*self\.metrics\.audit_dropped",),
    "ds01_build_info": (r"\bMetrics\(\)",),
    "ds01_devices": (r"\.set_devices\(",),
    "ds01_device_holder_info": (r"\.set_devices\(",),
    "ds01_gpu_equivalents_held": (r"\.set_gpu_usage\(",),
    "ds01_containers": (r"\.set_containers\(",),
    "ds01_policy_info": (r"\.set_policy\(",),
}
PRODUCTION = ("ds01d", "ds01cli", "gateway", "authz_plugin", "policy", "allocator", "formats")


def _family(name: str) -> str:
    return re.sub(r"_(bucket|count|sum|total|created)$", "", name)


def test_every_metric_named_by_the_readme_or_a_panel_is_recorded_in_production(
    dashboard: dict[str, Any],
) -> None:
    """Each ds01_* name in the README or a panel is exported, and production code feeds it."""
    root = PACKAGING.parent
    readme = (root / "README.md").read_text()
    # ds01_builds.slice is a cgroup: names followed by a dot are not metrics.
    named = {_family(n) for n in re.findall(r"\bds01_[a-z_]+\b(?![.\w])", readme)}
    named |= {_family(n) for _, expr in exprs(dashboard) for n in METRIC.findall(expr)}
    exported = {_family(n) for n in Metrics(CollectorRegistry()).metric_names()}
    assert named - exported == set(), "named but not exported"
    assert exported - set(FEEDERS) == set(), "exported with no known feeder: add a FEEDERS row"
    code = "\n".join(
        path.read_text()
        for package in PRODUCTION
        for path in sorted((root / package).rglob("*.py"))
        if path != root / "ds01d" / "observe" / "metrics.py"
    )
    unfed = {f for f in named if not all(re.search(p, code) for p in FEEDERS[f])}
    assert unfed == set()
