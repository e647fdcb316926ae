"""A real ``Daemon`` for unit tests of its glue: a policy file, no Docker, no cgroups."""

from __future__ import annotations

from pathlib import Path

from ds01d.daemon import Daemon, build_parser


def make_daemon(tmp_path: Path, policy_text: str, inventory: str = "none") -> Daemon:
    """A ``Daemon`` on ``policy_text``; close it with ``daemon.audit.close()``."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_text)
    args = build_parser().parse_args(
        [
            "--policy",
            str(policy),
            "--inventory",
            inventory,
            "--state-dir",
            str(tmp_path / "state"),
            "--docker-host",
            f"unix://{tmp_path}/none.sock",
            "--no-cgroups",
        ]
    )
    return Daemon(args)
