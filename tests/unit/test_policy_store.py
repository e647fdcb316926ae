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
