"""ds01d's glue between policy, allocator and lifecycle (no Docker needed)."""

from __future__ import annotations

from ds01d.daemon import Daemon, build_parser

POLICY = """
defaults:
  gpu_hold_after_stop: 15m
container_types:
  devcontainer:
    gpu_hold_after_stop: 5m
  compose:
    gpu_hold_after_stop: 2h
"""


def test_gpu_hold_after_stop_follows_the_container_type(tmp_path):
    """container_types may shorten a stopped container's GPU hold, never lengthen it: the
    kind comes from labels anyone can set."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    args = build_parser().parse_args(
        [
            "--policy",
            str(policy),
            "--inventory",
            "none",
            "--state-dir",
            str(tmp_path / "state"),
            "--docker-host",
            f"unix://{tmp_path}/none.sock",
            "--no-cgroups",
        ]
    )
    daemon = Daemon(args)
    try:
        assert daemon.broker.hold_after_stop("nobody-x", None, {}) == 900
        devcontainer = {"devcontainer.local_folder": "/home/x/proj"}
        assert daemon.broker.hold_after_stop("nobody-x", None, devcontainer) == 300
        compose = {"com.docker.compose.project": "x"}
        assert daemon.broker.hold_after_stop("nobody-x", None, compose) == 900
    finally:
        daemon.audit.close()


def test_ds01d_runs_on_uvloop_when_installed_and_on_asyncio_otherwise(monkeypatch):
    import asyncio
    import sys

    from ds01d.daemon import _run_event_loop

    async def which_loop() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert _run_event_loop(which_loop()).startswith("uvloop")
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop now raises ImportError
    assert _run_event_loop(which_loop()).startswith("asyncio")
