"""One DS01 deployment (private dockerd + ds01d) shared by the end-to-end tests, real users."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from tests.harness.users import ensure_user
from tests.stack.ds01 import Ds01Stack

POLICY = """
unknown_users: allow
direct_access: allow
sample_interval: 2s
defaults:
  priority: 10
  max_gpus: 0
  max_mig_instances: 1
  max_gpus_per_container: 1
  max_cpus: 2
  memory: 512m
  pids_limit: 512
  max_containers: 8
  gpu_hold_after_stop: 0
  aggregate: {cpus: 2, memory: 2g, pids: 1000}
  bind_mounts: ["{home}"]
groups:
  students:
    members: [e2e-alice, e2e-bob]
  researchers:
    members: [e2e-rita]
    priority: 50
    max_gpus: 2
    allow_full_gpu: true
    max_cpus: 4
    memory: 1g
  admins:
    admin: true
    unix_groups: [ds01-e2e-admin]
"""

USERS = {"e2e-alice": (), "e2e-bob": (), "e2e-rita": (), "e2e-dana": ("ds01-e2e-admin",)}


@pytest.fixture(scope="session")
def users() -> dict[str, tuple[int, int, str]]:
    return {name: ensure_user(name, groups=groups) for name, groups in USERS.items()}


@pytest.fixture(scope="session")
def stack(users):
    base = Path(tempfile.mkdtemp(prefix="ds01e-", dir="/tmp"))
    s = Ds01Stack(base, POLICY)
    s.start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def clean(stack):
    stack.remove_all_containers()
    yield stack
    stack.remove_all_containers()
