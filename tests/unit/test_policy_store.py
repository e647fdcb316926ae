"""The live policy: reloaded when the file changes, an invalid new one rejected."""

from __future__ import annotations

import os

import pytest

from ds01d.policy_store import PolicyStore
from policy.identity import Identity
from policy.loader import PolicyError

ALICE = Identity(uid=1001, user="alice")


def test_builtin_default_policy_needs_no_file():
    """ds01d starts with no --policy on any host."""
    store = PolicyStore(None)
    assert store.limits(ALICE).memory == 32 * 2**30


def test_changed_file_is_noticed_and_loaded(tmp_path):
    """A new valid policy replaces the old one; reload callbacks see ok."""
    path = tmp_path / "policy.yaml"
    path.write_text("defaults:\n  memory: 1g\n")
    seen = []
    store = PolicyStore(str(path), on_reload=lambda ok, detail: seen.append(ok))
    path.write_text("defaults:\n  memory: 2g\n")
    os.utime(path, (1, 1))  # a different mtime, even within the same second
    assert store.changed_on_disk()
    assert store.reload() and store.limits(ALICE).memory == 2 * 2**30 and seen == [True]


def test_invalid_new_policy_keeps_the_old_one(tmp_path):
    """An invalid edit is rejected with its error and the previous policy stays in force."""
    path = tmp_path / "policy.yaml"
    path.write_text("defaults:\n  memory: 1g\n")
    seen = []
    store = PolicyStore(str(path), on_reload=lambda ok, detail: seen.append((ok, detail)))
    path.write_text("defaults:\n  memory: lots\n")
    assert not store.reload()
    assert store.limits(ALICE).memory == 2**30
    assert seen[0][0] is False and "defaults.memory: 'lots' is not a size like 32g" in seen[0][1]


def test_invalid_policy_at_start_is_an_error(tmp_path):
    """ds01d refuses to start on an invalid policy rather than run with none."""
    path = tmp_path / "policy.yaml"
    path.write_text("defaults: [1, 2]\n")
    with pytest.raises(PolicyError):
        PolicyStore(str(path))


def test_a_rejected_reload_is_remembered_until_a_valid_policy_loads(tmp_path):
    """The rejection (error and time) stays visible while the old policy is in force."""
    path = tmp_path / "policy.yaml"
    path.write_text("defaults:\n  memory: 1g\n")
    store = PolicyStore(str(path))
    assert store.rejected is None
    path.write_text("defaults:\n  max_gpu: 1\n")
    assert not store.reload()
    assert store.rejected is not None and "defaults.max_gpu: unknown key" in store.rejected.error
    assert not store.reload() and store.rejected is not None  # still broken: still reported
    path.write_text("defaults:\n  memory: 2g\n")
    assert store.reload() and store.rejected is None


def test_limits_for_user_include_their_unix_groups(tmp_path):
    """A user mapped only through unix_groups: gets that group's limits by name (NSS), as
    the gateway gives them; without groups they would fall back to defaults."""
    import grp
    import pwd

    root_group = grp.getgrgid(pwd.getpwnam("root").pw_gid).gr_name
    path = tmp_path / "policy.yaml"
    path.write_text(f"groups:\n  staff:\n    unix_groups: [{root_group}]\n    memory: 3g\n")
    store = PolicyStore(str(path))
    limits = store.limits_for_user("root")
    assert (limits.group, limits.memory) == ("staff", 3 * 2**30)
    assert store.limits_for_user("no-such-user-ds01").group == "default"
