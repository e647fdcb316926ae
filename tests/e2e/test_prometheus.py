"""The Grafana dashboard against a real Prometheus scraping a real ds01d.

A scripted workload (GPU holders, a refusal, a GPU request that waits and gives up, a
container stopped for its maximum runtime) runs as real users through the gateway of a
ds01d on a private dockerd; Debian's ``prometheus`` scrapes ds01d's ``/metrics`` every
second; then every query of every panel in ``packaging/grafana-dashboard.json`` is asked of
Prometheus' HTTP API and must return data.
"""

from __future__ import annotations

import json
import math
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.host_ledger import temp_dir
from tests.harness.users import ensure_user
from tests.stack.ds01 import IMAGE, REPO, Ds01Stack

pytestmark = [pytest.mark.docker, pytest.mark.e2e]

DASHBOARD = REPO / "packaging" / "grafana-dashboard.json"
HOLDER, OTHER, WAITER, RUNNER = "prm-ann", "prm-ben", "prm-cal", "prm-dan"

POLICY = f"""
sample_interval: 1s
defaults:
  max_gpus: 0
  max_mig_instances: 1
  max_gpus_per_container: 1
  gpu_hold_after_stop: 0
  gpu_wait: 3s
  memory: 256m
users:
  {RUNNER}: {{max_runtime: 3s, max_mig_instances: 0}}
"""

# Panels whose queries cannot return data from ds01d in a test, each with the reason.
NOT_FROM_DS01D = {
    "GPU activity per user (DCGM)": (
        "reads DCGM_FI_PROF_GR_ENGINE_ACTIVE, which NVIDIA's dcgm-exporter serves from a real "
        "GPU; ds01d only writes the job-mapping files that label those series (unit-tested in "
        "tests/unit/test_dcgm_mapping.py)"
    ),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Prometheus:
    """Debian's prometheus with its own config and storage, stopped by pid."""

    def __init__(self, base: Path, target: str) -> None:
        self.base = base
        self.url = f"http://127.0.0.1:{free_port()}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {
                    "job_name": "ds01",
                    "metrics_path": "/metrics",
                    "static_configs": [{"targets": [target]}],
                }
            ],
        }
        self.config = base / "prometheus.yml"
        self.config.write_text(json.dumps(config))  # JSON is YAML
        self.log = base / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = time.monotonic()

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    "prometheus",
                    f"--config.file={self.config}",
                    f"--storage.tsdb.path={self.base / 'data'}",
                    f"--web.listen-address={self.url.removeprefix('http://')}",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.started = time.monotonic()
        self.wait_for(lambda: self.get("/-/ready") is not None, "Prometheus to be ready")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def get(self, path: str, **params: str) -> Any:
        url = self.url + path + ("?" + urllib.parse.urlencode(params) if params else "")
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = response.read()
        except OSError:
            return None
        return json.loads(body) if path.startswith("/api/") else body

    def query(self, expr: str) -> list[dict[str, Any]]:
        answer = self.get("/api/v1/query", query=expr)
        assert answer is not None and answer["status"] == "success", (expr, answer)
        return answer["data"]["result"]

    def wait_for(self, ready: Any, what: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited: {self.log.read_text()[-2000:]}")
            if ready():
                return
            time.sleep(0.5)
        raise AssertionError(f"timed out waiting for {what}; log: {self.log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def observed() -> Iterator[tuple[Ds01Stack, Prometheus]]:
    if shutil.which("prometheus") is None:
        pytest.fail("prometheus missing: scripts/setup-host.sh installs Debian's prometheus")
    for name in (HOLDER, OTHER, WAITER, RUNNER):
        ensure_user(name)
    base = temp_dir("ds01prom-")  # removed when the test session ends
    metrics_address = f"127.0.0.1:{free_port()}"
    stack = Ds01Stack(
        base,
        POLICY,
        inventory="tests/fixtures/inventory-small.yaml",
        extra_args=("--metrics-address", metrics_address),
    )
    prometheus = Prometheus(base, metrics_address)
    try:
        stack.start()
        prometheus.start()
        # Ready is not scraped: rates need samples from before the workload.
        prometheus.wait_for(
            lambda: prometheus.query('up{job="ds01"} == 1'), "a first scrape of ds01d"
        )
        run_workload(stack)
        # ds01_containers comes from the lifecycle's sample, the stop from max_runtime (3s):
        # wait for both to reach Prometheus, then a few more scrapes, so that rates have
        # two points after the last event.
        prometheus.wait_for(
            lambda: (
                prometheus.query('ds01_lifecycle_actions_total{action="stop"}')
                and prometheus.query(f'ds01_containers{{user="{RUNNER}",state="exited"}}')
            ),
            "the lifecycle's stop and container counts to be scraped",
        )
        time.sleep(3)
        yield stack, prometheus
    finally:
        prometheus.stop()
        stack.stop()


def run_workload(stack: Ds01Stack) -> None:
    """What a lab does in a minute: take GPUs, get refused, wait in vain, overrun a limit."""
    for user in (HOLDER, OTHER):  # the two MIG instances (students may not have whole GPUs)
        held = stack.docker("run", "-d", "--gpus", "1", IMAGE, "sleep", "600", user=user)
        assert held.returncode == 0, held.stderr
    refused = stack.docker("run", "--rm", "--privileged", IMAGE, "true", user=HOLDER)
    assert refused.returncode != 0 and "ds01" in refused.stderr.lower(), refused.stderr
    # No MIG instance left: this one waits in the queue (gpu_wait: 3s) and gives up.
    waited = stack.docker(
        "run", "--rm", "--gpus", "1", "--label", "ds01.wait=3s", IMAGE, "true", user=WAITER
    )
    assert waited.returncode != 0, waited.stdout
    runner = stack.docker("run", "-d", IMAGE, "sleep", "600", user=RUNNER)
    assert runner.returncode == 0, runner.stderr


def panel_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return [
        (panel["title"], target["expr"]) for panel in panels for target in panel.get("targets", [])
    ]


def as_prometheus_sees_it(expr: str, instance: str, window: str) -> str:
    """Grafana's variables as Grafana would fill them for this server and a short range."""
    return expr.replace("$instance", instance).replace("$__rate_interval", window)


def has_value(result: list[dict[str, Any]]) -> bool:
    return any(not math.isnan(float(row["value"][1])) for row in result)


def test_every_dashboard_panel_gets_data_from_a_live_ds01d(observed) -> None:
    """Each query of each panel returns at least one series with a number in it."""
    _, prometheus = observed
    # The dashboard's $instance variable is label_values(ds01_build_info, instance).
    instances = prometheus.get("/api/v1/label/instance/values", **{"match[]": "ds01_build_info"})[
        "data"
    ]
    assert len(instances) == 1, instances
    window = f"{int(time.monotonic() - prometheus.started) + 5}s"  # all the test's time

    empty = []
    for title, expr in panel_queries():
        if title in NOT_FROM_DS01D:
            continue
        query = as_prometheus_sees_it(expr, instances[0], window)
        result = prometheus.query(query)
        if not has_value(result):
            empty.append(f"{title}: {query} -> {result}")
    assert not empty, "\n".join(empty)


def test_the_workload_shows_in_the_numbers(observed) -> None:
    """The panels say what happened: who holds what, the refusal, the wait, the stop."""
    _, prometheus = observed
    holders = {row["metric"]["user"] for row in prometheus.query("ds01_device_holder_info")}
    assert holders == {HOLDER, OTHER}
    denials = prometheus.query('sum(ds01_decisions_total{result="deny",door="gateway"})')
    assert float(denials[0]["value"][1]) >= 1  # --privileged
    (waits,) = prometheus.query("ds01_queue_wait_seconds_count")
    assert float(waits["value"][1]) == 1
    (stops,) = prometheus.query('ds01_lifecycle_actions_total{action="stop"}')
    assert stops["metric"]["reason"] == "max_runtime"
    running = prometheus.query(f'ds01_containers{{user="{RUNNER}",state="exited"}}')
    assert running and float(running[0]["value"][1]) == 1
    ticketed = prometheus.query(
        'ds01_authz_request_duration_seconds_count{endpoint="/containers/create"}'
    )
    assert ticketed and float(ticketed[0]["value"][1]) >= 3  # gateway creates, re-checked
