"""Tests leave the host as they found it: the host ledger's rules, then a real run compared.

The ledger (tests/harness/host_ledger.py) undoes what the suite made when no live session uses
it any more, and never touches what it did not make. The last test runs a small representative
subset (one integration file, one end-to-end file with its own users and stack) as a separate
pytest session and compares the host before and after.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require_docker
from tests.harness import host_ledger
from tests.harness.host_state import diff
from tests.harness.users import ensure_user, remove_user

REPO = Path(__file__).resolve().parents[2]
FOREIGN = "ds01t-foreign"  # a user the suite did not make (no marker)
OURS = "ds01t-ledger"


@pytest.fixture
def ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private ledger file for this test (the session's real claims stay in the real one)."""
    if os.geteuid() != 0:
        if os.environ.get("CI"):  # CI runs as root: not being root there is a failure
            pytest.fail("the host ledger only acts as root")
        pytest.skip("the host ledger only acts as root")
    path = tmp_path / "ledger" / "ledger.json"
    monkeypatch.setattr(host_ledger, "LEDGER", path)
    monkeypatch.setenv("DS01_TEST_LEDGER", str(path))
    yield path
    host_ledger._finish(lambda entry: True)  # whatever a failed test left


def other_session(code: str) -> subprocess.Popen[str]:
    """A separate process that registers as a test session, runs `code`, then waits for a line
    on stdin (EOF or "end": end the session cleanly; "die": exit without ending it)."""
    script = textwrap.dedent(
        """
        import os, sys
        from pathlib import Path
        from tests.harness import host_ledger
        from tests.harness.users import ensure_user
        host_ledger.start_session()
        {code}
        print("ready", flush=True)
        if sys.stdin.readline().strip() == "die":
            os._exit(1)
        host_ledger.end_session()
        """
    ).format(code=code)
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def finish(proc: subprocess.Popen[str], how: str = "end") -> None:
    proc.communicate(how + "\n", timeout=60)


def test_a_made_path_is_removed_and_an_existing_one_is_never_recorded(ledger, tmp_path):
    made = tmp_path / "made"
    made.mkdir()
    assert host_ledger.claim("path", made)
    existing = tmp_path / "existing"
    existing.mkdir()
    assert not host_ledger.claim("path", existing, make=lambda: False)
    host_ledger.release("path", made)
    host_ledger.release("path", existing)
    assert not made.exists()
    assert existing.is_dir()
    assert not ledger.exists()  # an empty ledger is removed with its folder
    assert not ledger.parent.exists()


def test_a_path_shared_with_a_live_session_stays_until_it_ends(ledger, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    host_ledger.claim("path", shared)
    other = other_session(f"host_ledger.claim('path', {str(shared)!r})")
    host_ledger.release("path", shared)
    assert shared.is_dir()  # the other session still holds it
    finish(other)
    assert not shared.exists()


def test_a_dead_runs_leftovers_are_cleaned_by_the_next_session(ledger, tmp_path):
    left = tmp_path / "left-by-a-killed-run"
    dead = other_session(f"Path({str(left)!r}).mkdir(); host_ledger.claim('path', {str(left)!r})")
    finish(dead, "die")
    assert left.is_dir()
    host_ledger.release("path", tmp_path / "anything")  # any session's next ledger step
    assert not left.exists()


def test_a_mode_change_is_put_back(ledger, tmp_path):
    folder = tmp_path / "private"
    folder.mkdir(mode=0o700)
    os.chmod(folder, 0o700)
    host_ledger.add_mode_bits(folder, 0o001)
    assert folder.stat().st_mode & 0o777 == 0o701
    host_ledger.add_mode_bits(folder, 0o001)  # already there: a second holder, same original
    host_ledger.release("mode", folder)
    assert folder.stat().st_mode & 0o777 == 0o700


@pytest.fixture
def foreign_user() -> Iterator[str]:
    """A user made outside the suite (no marker), deleted by this fixture itself."""
    subprocess.run(["userdel", "-r", "-f", FOREIGN], capture_output=True, check=False)
    subprocess.run(["useradd", "-m", "-s", "/bin/sh", FOREIGN], check=True)
    yield FOREIGN
    subprocess.run(["userdel", "-r", "-f", FOREIGN], capture_output=True, check=False)


def test_users_the_suite_did_not_make_are_never_deleted(ledger, foreign_user):
    ensure_user(foreign_user)
    host_ledger.release("user", foreign_user)
    assert pwd.getpwnam(foreign_user).pw_gecos == ""
    with pytest.raises(RuntimeError, match="not made by the test suite"):
        remove_user(foreign_user)
    assert pwd.getpwnam(foreign_user)


def test_a_marked_user_left_by_a_dead_run_is_adopted_and_removed(ledger):
    dead = other_session(f"ensure_user({OURS!r})")
    finish(dead, "die")
    # A run that dies loses its ledger too (say, after a reboot): the marker is enough.
    ledger.unlink()
    assert pwd.getpwnam(OURS).pw_gecos == host_ledger.USER_MARKER
    ensure_user(OURS)
    home = Path(pwd.getpwnam(OURS).pw_dir)
    host_ledger.release("user", OURS)
    with pytest.raises(KeyError):
        pwd.getpwnam(OURS)
    assert not home.exists()


# --- a real run ------------------------------------------------------------------------------

SUBSET = ["tests/integration/test_harness.py", "tests/e2e/test_gpu_forgery.py"]


def _explained(change: str, key: str, held: set[str]) -> bool:
    """Whether a change is another live session's doing (it holds the thing in the ledger)."""
    item = change[1:]
    name = item.split(":", 1)[0]
    candidates = {
        "users": {name},
        "groups": {name},
        "cgroups": {item},
        "plugin_specs": {f"/etc/docker/plugins/{item}"},
        "tmp": {f"/tmp/{item}"},
    }.get(key, set())
    if key == "ledger":  # the ledger file exists while anyone holds anything
        return bool(held)
    if key == "cgroups":  # a cgroup under one another session holds is that session's
        return any(item == h or item.startswith(h + "/") for h in held)
    return bool(candidates & held)


def _held_by_others(exclude: set[str]) -> set[str]:
    import json

    try:
        entries = json.loads(host_ledger.LEDGER.read_text())["entries"]
    except (OSError, ValueError, KeyError):
        return set()
    alive = host_ledger.live_sessions() - exclude
    return {e["target"] for e in entries if set(e["holders"]) & alive}


# Snapshot, run the subset as its own pytest session, snapshot again; both snapshots as JSON.
RUN_SUBSET = """
import json, subprocess, sys
from tests.harness.host_state import snapshot
before = snapshot()
run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *sys.argv[1:]],
                     stdout=sys.stderr, timeout=900)
print(json.dumps({"rc": run.returncode, "before": before, "after": snapshot()}))
"""


def run_subset() -> dict:
    """RUN_SUBSET, with a /tmp of its own where unshare allows (other sessions on this host
    make /tmp/ds01* folders of their own meanwhile); users, cgroups and /etc stay the host's."""
    import json
    import shutil

    cmd = [sys.executable, "-c", RUN_SUBSET, *SUBSET]
    # A checkout (or its .venv) under /tmp would vanish behind the private /tmp: run plainly.
    under_tmp = any(str(p).startswith("/tmp/") for p in (REPO, sys.executable))
    if shutil.which("unshare") and not under_tmp:
        mount = 'mount -t tmpfs -o mode=1777 ds01-test-tmp /tmp && exec "$@"'
        cmd = ["unshare", "-m", "--propagation", "private", "sh", "-c", mount, "sh", *cmd]
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1000)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["rc"] == 0, run.stderr[-3000:]
    return result


def test_a_run_of_a_subset_leaves_the_host_as_it_found_it():
    """Users, groups, ds01 cgroups, modes of the checkout's parents, /tmp/ds01*, plugin specs:
    the same before and after (changes held by other live test sessions aside)."""
    require_docker()
    held_before = _held_by_others(set())
    result = run_subset()
    held = held_before | _held_by_others(set())
    left = {
        key: [c for c in changes if not _explained(c, key, held)]
        for key, changes in diff(result["before"], result["after"]).items()
    }
    left = {key: changes for key, changes in left.items() if changes}
    others = host_ledger.live_sessions() - {str(os.getpid())}
    if left and others:
        pytest.skip(f"other test sessions ({sorted(others)}) changed the host meanwhile: {left}")
    assert left == {}
