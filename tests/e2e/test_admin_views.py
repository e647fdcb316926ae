"""Admin views tell the truth (issue 14, items 5, 7 and 8), against a running ds01d, as real users.

A researcher mapped to their group only through ``unix_groups:`` shows under that group in
``ds01 users``, ``slices``, ``status`` and ``policy diff``; ``ds01 policy explain`` shows what
ds01d applies (a refused unknown user sees the refusal); a reload ds01d rejects shows in
``ds01 status`` and ``ds01 doctor`` until a valid policy is loaded.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.harness.users import ensure_user
from tests.stack.ds01 import IMAGE, Ds01Stack

pytestmark = [pytest.mark.docker, pytest.mark.e2e]

STUDENT, RESEARCHER, ADMIN, STRANGER = "e2e-alice", "e2e-rex", "e2e-dana", "e2e-uma"
RESEARCH_GROUP = "ds01-e2e-research"

POLICY = f"""
unknown_users: deny
defaults:
  max_containers: 8
  max_cpus: 2
  memory: 512m
  gpu_hold_after_stop: 0
  aggregate: {{cpus: 2, memory: 2g, pids: 1000}}
groups:
  students:
    members: [{STUDENT}]
  researchers:
    unix_groups: [{RESEARCH_GROUP}]
    max_containers: 2
    max_cpus: 4
    memory: 1g
    aggregate: {{memory: 3g}}
  admins:
    admin: true
    members: [root]
    unix_groups: [ds01-e2e-admin]
"""


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return result.stdout


@pytest.fixture(scope="module")
def lab():
    ensure_user(STUDENT)
    ensure_user(RESEARCHER, groups=(RESEARCH_GROUP,))
    ensure_user(ADMIN, groups=("ds01-e2e-admin",))
    ensure_user(STRANGER)
    s = Ds01Stack(Path(tempfile.mkdtemp(prefix="ds01a-", dir="/tmp")), POLICY)
    s.start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def busy(lab):
    """The researcher runs two containers: at their group's max_containers (2)."""
    for name in ("rex-1", "rex-2"):
        ok(lab.docker("run", "-d", "--name", name, IMAGE, "sleep", "600", user=RESEARCHER))
    yield lab
    lab.remove_all_containers()


def test_users_shows_a_unix_group_member_under_their_group(busy):
    """Item 5: `ds01 users` resolves the researcher with their Unix groups, not as default."""
    rows = {u["user"]: u for u in json.loads(ok(busy.ds01("users", "--json", user=ADMIN)))["users"]}
    assert rows[RESEARCHER]["group"] == "researchers"
    assert rows[RESEARCHER]["max_containers"] == 2
    table = ok(busy.ds01("users", user=ADMIN))
    assert any(line.split()[:2] == [RESEARCHER, "researchers"] for line in table.splitlines())


def test_slices_show_the_group_aggregate(busy):
    """Item 5: `ds01 slices` gives the researcher their group's aggregate, under their group."""
    rows = json.loads(ok(busy.ds01("slices", "--json", user=ADMIN)))["slices"]
    (row,) = [r for r in rows if r["user"] == RESEARCHER]
    assert row["group"] == "researchers" and row["aggregate"]["memory"] == 3 * 2**30


def test_status_lists_the_researcher_near_their_limit(busy):
    """Item 5: 2 of 2 containers is near the limit; resolved as default (8) it was missed."""
    out = ok(busy.ds01("status", user=ADMIN))
    assert "users near their limits:" in out
    assert f"  {RESEARCHER}: 2 of 2 containers" in out.splitlines()


def test_policy_diff_compares_unix_group_members(lab, tmp_path):
    """Item 5: `ds01 policy diff` includes users mapped only by unix_groups:, under that group."""
    new = tmp_path / "new.yaml"
    new.write_text(POLICY.replace("    memory: 1g\n", "    memory: 2g\n"))
    new.chmod(0o644)
    out = ok(lab.ds01("policy", "diff", str(lab.policy_file), str(new)))
    assert [RESEARCHER, "researchers", "memory", "1g", "2g"] in [
        line.split() for line in out.splitlines()
    ]


def test_explain_shows_what_ds01d_applies(lab):
    """Item 7: explain asks ds01d: the researcher's own values equal `ds01 limits`."""
    explained = json.loads(ok(lab.ds01("policy", "explain", RESEARCHER, "--json", user=RESEARCHER)))
    limits = json.loads(ok(lab.ds01("limits", "--json", user=RESEARCHER)))
    assert explained["group"] == "researchers" and explained["refused"] is None
    assert explained["values"] == limits["limits"]
    assert explained["policy"] == str(lab.policy_file)
    out = ok(lab.ds01("policy", "explain", RESEARCHER, user=ADMIN))
    assert "group: researchers" in out and "1g" in out


def test_explain_of_another_user_is_for_admins(lab):
    """A student cannot read another user's limits through explain."""
    result = lab.ds01("policy", "explain", RESEARCHER, user=STUDENT)
    assert result.returncode == 1 and "for admins" in result.stderr


def test_explain_tells_a_refused_unknown_user_they_are_refused(lab):
    """Item 7: unknown_users: deny: the stranger sees the refusal their docker command gets."""
    docker = lab.docker("ps", user=STRANGER)
    assert docker.returncode != 0 and f"{STRANGER} is not in the DS01 policy" in docker.stderr
    for asker in (STRANGER, ADMIN):
        out = ok(lab.ds01("policy", "explain", STRANGER, user=asker))
        assert f"{STRANGER} is refused by ds01d" in out
        assert f"ds01: {STRANGER} is not in the DS01 policy. To fix: ask an admin" in out
        assert "KEY" not in out and "max_cpus" not in out


def doctor_reload_check(lab: Ds01Stack) -> dict:
    out = lab.ds01(
        "doctor",
        "--json",
        "--unit",
        "/nonexistent/ds01d.service",
        "--gateway-socket",
        str(lab.gateway_socket),
        "--policy",
        str(lab.policy_file),
        "--inventory",
        lab.inventory,
        timeout=60,
    ).stdout
    (check,) = [c for c in json.loads(out) if c["name"] == "policy reload"]
    return check


def wait_for(predicate, what: str, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_rejected_reload_shows_in_status_and_doctor_until_fixed(lab):
    """Item 8: while ds01d keeps the old policy, status and doctor say so, with the error."""
    try:
        lab.set_policy(POLICY.replace("max_cpus: 4", "max_cpu: 4"))
        status = wait_for(
            lambda: (
                (out := ok(lab.ds01("status", user=ADMIN))) and "reload was rejected" in out and out
            ),
            "status to show the rejected reload",
        )
        assert "groups.researchers.max_cpu: unknown key; did you mean max_cpus?" in status
        assert "ds01d still enforces the previous policy" in status
        assert f"To fix: correct {lab.policy_file}" in status
        check = doctor_reload_check(lab)
        assert check["ok"] is False and "max_cpu: unknown key" in check["detail"]
        assert check["fix"].startswith(f"correct {lab.policy_file} (ds01 policy validate")
        # The old limits are still the ones applied.
        limits = json.loads(ok(lab.ds01("limits", "--json", user=RESEARCHER)))
        assert limits["limits"]["max_cpus"] == 4
    finally:
        lab.set_policy(POLICY)
    wait_for(
        lambda: "reload was rejected" not in ok(lab.ds01("status", user=ADMIN)),
        "status to clear once the policy is valid",
    )
    assert doctor_reload_check(lab)["ok"] is True
