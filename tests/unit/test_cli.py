"""The `ds01` commands that need no daemon: policy validate/explain/diff, import-ds01, init."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ds01cli.cli import main

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_validate_reports_file_line_key_and_reason(tmp_path, capsys):
    """A bad policy exits 1 with `file:line key: reason`; a good one exits 0."""
    bad = tmp_path / "policy.yaml"
    bad.write_text("defaults:\n  max_cpus: 4\ngroups:\n  students:\n    memory: 32 gigs\n")
    code, _, err = run(capsys, "policy", "validate", str(bad))
    assert code == 1
    assert err.strip() == f"ds01: {bad}:5 groups.students.memory: '32 gigs' is not a size like 32g"
    bad.write_text("defaults:\n  max_cpus: 4\n")
    assert run(capsys, "policy", "validate", str(bad))[0] == 0


def test_validate_warns_about_shared_bind_prefixes_and_exits_0(tmp_path, capsys):
    """`/data` rather than `/data/{user}`: a warning with file:line and the per-user form."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "defaults:\n  max_cpus: 4\ngroups:\n  lab:\n    members: [a]\n"
        "    bind_mounts: ['{home}', /data]\n"
    )
    code, out, err = run(capsys, "policy", "validate", str(policy))
    assert code == 0 and out.strip() == f"{policy}: valid (1 warning)"
    assert err.strip() == (
        f"ds01: warning: {policy}:6 groups.lab.bind_mounts: /data is not per-user: every user "
        "groups.lab gives it reaches the same folder, and their containers (which run as them) "
        "read and write each other's files there wherever file permissions allow it. "
        "To fix: a per-user prefix is safer: /data/{user}, each folder owned by its user"
    )
    policy.write_text("groups:\n  lab:\n    members: [a]\n    bind_mounts: ['/data/{user}']\n")
    code, out, err = run(capsys, "policy", "validate", str(policy))
    assert (code, out.strip(), err) == (0, f"{policy}: valid", "")


def test_validate_errors_stay_errors_next_to_a_shared_prefix(tmp_path, capsys):
    """An invalid policy exits 1 with its error, whatever it would have warned about."""
    policy = tmp_path / "policy.yaml"
    policy.write_text("defaults:\n  bind_mounts: [/data]\n  memory: lots\n")
    code, _, err = run(capsys, "policy", "validate", str(policy))
    assert code == 1 and "defaults.memory" in err and "warning" not in err


def test_validate_missing_file_is_a_failure_with_a_fix(capsys):
    """A missing file is exit 1 and says so."""
    code, _, err = run(capsys, "policy", "validate", "/nonexistent/policy.yaml")
    assert code == 1 and "cannot read /nonexistent/policy.yaml" in err


def test_misuse_exits_2(capsys):
    """An unknown command is misuse (exit 2)."""
    assert run(capsys, "frobnicate")[0] == 2


def test_explain_names_where_each_value_comes_from(tmp_path, capsys):
    """`ds01 policy explain` shows each effective value and its source."""
    policy = tmp_path / "p.yaml"
    policy.write_text(
        "defaults:\n  memory: 32g\ngroups:\n  researchers:\n    members: [rita]\n"
        "    memory: 64g\nusers:\n  rita:\n    max_cpus: 12\n"
    )
    code, out, _ = run(capsys, "policy", "explain", "rita", "--policy", str(policy), "--json")
    data = json.loads(out)
    assert code == 0 and data["group"] == "researchers"
    assert (
        data["values"]["memory"] == 64 * 2**30 and data["sources"]["memory"] == "group researchers"
    )
    assert data["sources"]["max_cpus"] == "users.rita"
    code, out, _ = run(capsys, "policy", "explain", "rita", "--policy", str(policy))
    assert "memory" in out and "64g" in out and "group researchers" in out


def test_diff_lists_changed_effective_limits(tmp_path, capsys):
    """`ds01 policy diff` shows only what changes for whom."""
    old, new = tmp_path / "old.yaml", tmp_path / "new.yaml"
    old.write_text("groups:\n  s:\n    members: [alice]\n    memory: 8g\n")
    new.write_text("groups:\n  s:\n    members: [alice]\n    memory: 16g\n")
    code, out, _ = run(capsys, "policy", "diff", str(old), str(new))
    assert code == 0 and "alice" in out and "8g" in out and "16g" in out


def test_import_ds01_converts_and_reports_unmapped(tmp_path, capsys):
    """The original resource-limits.yaml becomes a valid policy; unmapped keys are listed."""
    out_file = tmp_path / "policy.yaml"
    code, out, err = run(
        capsys, "import-ds01", str(FIXTURES / "ds01-resource-limits.yaml"), "-o", str(out_file)
    )
    assert code == 0 and "wrote" in out
    assert "not mapped:" in err
    assert run(capsys, "policy", "validate", str(out_file))[0] == 0


def test_import_of_a_non_mapping_fails_cleanly(tmp_path, capsys):
    """A file that is not the original format is an error, not a crash."""
    bad = tmp_path / "r.yaml"
    bad.write_text("- just\n- a list\n")
    code, _, err = run(capsys, "import-ds01", str(bad))
    assert code == 1 and "cannot convert" in err


@pytest.mark.parametrize("gpu", [True, False])
def test_init_writes_a_devcontainer_asking_for_a_gpu(tmp_path, capsys, gpu):
    """`ds01 init` writes .devcontainer/devcontainer.json, with --gpus 1 unless --no-gpu."""
    args = ["init", str(tmp_path)] + ([] if gpu else ["--no-gpu"])
    assert run(capsys, *args)[0] == 0
    config = json.loads((tmp_path / ".devcontainer" / "devcontainer.json").read_text())
    assert ("--gpus" in config["runArgs"]) is gpu
    assert run(capsys, "init", str(tmp_path))[0] == 1  # exists: refuse without --force
