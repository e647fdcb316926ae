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
        "defaults:\n  max_cpus: 4\ngroups:\n  lab:\n    members: [root]\n"
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
    policy.write_text("groups:\n  lab:\n    members: [root]\n    bind_mounts: ['/data/{user}']\n")
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


# ---- issue 14: validate, explain and diff tell the truth -----------------------------------

INVENTORY = Path(__file__).resolve().parents[2] / "config" / "inventory.example.yaml"


@pytest.fixture
def no_daemon(monkeypatch, tmp_path):
    """No ds01d to ask: the gateway socket does not exist."""
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-ds01d.sock")


def test_validate_reports_every_error_with_suggestions(tmp_path, capsys, no_daemon):
    """All errors, each `file:line key: reason`, misspelt keys with the nearest real one."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "default:\n  max_cpus: 4\ngroups:\n  students:\n    max_gpu: 1\n    memory: lots\n"
    )
    code, out, err = run(capsys, "policy", "validate", str(policy))
    assert code == 1 and out == ""
    assert err.splitlines() == [
        f"ds01: {policy}:1 default: unknown key; did you mean defaults? "
        "(see the configuration reference in README.md)",
        f"ds01: {policy}:5 groups.students.max_gpu: unknown key; did you mean max_gpus? "
        "(see the configuration reference in README.md)",
        f"ds01: {policy}:6 groups.students.memory: 'lots' is not a size like 32g",
        f"ds01: {policy}: 3 errors",
    ]


def test_validate_warns_about_names_the_host_does_not_have(tmp_path, capsys, no_daemon):
    """Unknown Unix groups, users that do not exist and MIG profiles outside the inventory
    are warnings (the policy is valid, exit 0), each with file:line and a fix."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "groups:\n"
        "  students:\n"
        "    members: [root, ds01-nobody-here]\n"
        "    unix_groups: [ds01-no-such-group]\n"
        "    allowed_mig_profiles: [1g.10gb, 1g.10g]\n"
    )
    code, out, err = run(capsys, "policy", "validate", str(policy), "--inventory", str(INVENTORY))
    assert code == 0 and out.strip() == f"{policy}: valid (3 warnings)"
    lines = err.splitlines()
    assert lines[0] == (
        f"ds01: warning: {policy}:3 groups.students.members.1: there is no user ds01-nobody-here "
        "on this host. To fix: check the spelling (getent passwd), or ignore this if the "
        "account is still to come"
    )
    assert lines[1] == (
        f"ds01: warning: {policy}:4 groups.students.unix_groups.0: there is no Unix group "
        "ds01-no-such-group on this host, so it maps nobody. To fix: name an existing group "
        "(getent group) or create it (groupadd)"
    )
    assert lines[2].startswith(
        f"ds01: warning: {policy}:5 groups.students.allowed_mig_profiles.1: no MIG instance of "
        "profile 1g.10g is in the inventory (did you mean 1g.10gb?), so it can never be given. "
        "To fix: use a profile the inventory has ("
    )
    assert len(lines) == 3


def test_validate_without_an_inventory_says_profiles_were_not_checked(tmp_path, capsys, no_daemon):
    """No --inventory and no ds01d to ask: a note, not a silent pass."""
    policy = tmp_path / "policy.yaml"
    policy.write_text("defaults:\n  allowed_mig_profiles: [1g.10g]\n")
    code, _, err = run(capsys, "policy", "validate", str(policy))
    assert code == 0 and "MIG profiles not checked" in err and "--inventory FILE" in err


def test_validate_json(tmp_path, capsys, no_daemon):
    """--json: errors and warnings as objects with file, line, key, reason and message."""
    policy = tmp_path / "policy.yaml"
    policy.write_text("defaults:\n  max_gpu: 1\n")
    code, out, _ = run(capsys, "policy", "validate", str(policy), "--json")
    data = json.loads(out)
    assert code == 1 and data["valid"] is False and data["warnings"] == []
    (error,) = data["errors"]
    assert (error["file"], error["line"], error["key"]) == (str(policy), 2, "defaults.max_gpu")
    assert "did you mean max_gpus?" in error["reason"]
    policy.write_text("users:\n  ds01-nobody-here: {max_gpus: 1}\n")
    code, out, _ = run(capsys, "policy", "validate", str(policy), "--json")
    data = json.loads(out)
    assert code == 0 and data["valid"] is True and data["errors"] == []
    assert [w["key"] for w in data["warnings"]] == ["users.ds01-nobody-here"]


def test_explain_asks_the_daemon_not_a_file(capsys, no_daemon):
    """Without --file, explain asks ds01d; with none running it says so (it does not quietly
    read /etc/ds01/policy.yaml or the built-in default, which may not be what is enforced)."""
    code, out, err = run(capsys, "policy", "explain", "root")
    assert code == 1 and out == "" and "cannot reach ds01d" in err


def test_explain_of_a_refused_unknown_user_says_refused(tmp_path, capsys):
    """unknown_users: deny refuses a user in no group: explain says so, not a default table."""
    policy = tmp_path / "p.yaml"
    policy.write_text("unknown_users: deny\ngroups:\n  lab:\n    members: [root]\n")
    code, out, _ = run(capsys, "policy", "explain", "ds01-nobody-here", "--file", str(policy))
    assert code == 0 and "KEY" not in out
    assert out.splitlines() == [
        f"ds01-nobody-here is refused by {policy} (a file: ds01d may enforce another):",
        "  ds01: ds01-nobody-here is not in the DS01 policy. To fix: ask an admin to add you to "
        "a group in /etc/ds01/policy.yaml",
    ]


def test_diff_resolves_users_with_their_unix_groups(tmp_path, capsys):
    """A user mapped only through unix_groups: is compared, under that group (not default)."""
    import grp
    import pwd

    unix = grp.getgrgid(pwd.getpwnam("root").pw_gid).gr_name
    old, new = tmp_path / "old.yaml", tmp_path / "new.yaml"
    old.write_text(f"groups:\n  staff:\n    unix_groups: [{unix}]\n    memory: 8g\n")
    new.write_text(f"groups:\n  staff:\n    unix_groups: [{unix}]\n    memory: 16g\n")
    code, out, _ = run(capsys, "policy", "diff", str(old), str(new))
    rows = [line.split() for line in out.splitlines()]
    assert code == 0 and ["root", "staff", "memory", "8g", "16g"] in rows


def test_status_names_a_rejected_reload_with_its_fix():
    """The line ds01 status shows while ds01d keeps the previous policy."""
    from ds01cli.cli import reload_rejected

    assert reload_rejected({"source": "/p.yaml", "sha256": "ab" * 32, "rejected": None}) is None
    line = reload_rejected(
        {
            "source": "/p.yaml",
            "sha256": "ab" * 32,
            "rejected": {"error": "/p.yaml:2 defaults.max_gpu: unknown key", "at": 1.0},
        }
    )
    assert line is not None and line.startswith("problem: the policy reload was rejected ")
    assert "ds01d still enforces the previous policy (sha256 abababababab)" in line
    assert "/p.yaml:2 defaults.max_gpu: unknown key" in line
    assert "To fix: correct /p.yaml (ds01 policy validate /p.yaml)" in line
    student = reload_rejected(
        {"source": "/p.yaml", "sha256": "ab" * 32, "admin": False, "rejected": {"at": 1.0}}
    )
    assert student is not None and student.endswith("To fix: tell an admin of this server")


def test_doctor_shows_a_rejected_reload_until_it_is_fixed(tmp_path):
    """`ds01 doctor` fails with the error and the fix while ds01d keeps an old policy, and
    passes once ds01d reports a valid policy loaded."""
    from ds01cli.doctor import Host, check_policy_reload

    answer = {
        "source": "/etc/ds01/policy.yaml",
        "sha256": "cd" * 32,
        "rejected": {"error": "/etc/ds01/policy.yaml:2 defaults.max_gpu: unknown key", "at": 1.0},
    }
    host = Host(gateway_socket="gw", request=lambda sock, method, path: (200, {}, answer))
    (check,) = check_policy_reload(host)
    assert (check.name, check.ok, check.warn) == ("policy reload", False, False)
    assert check.detail == (
        "ds01d rejected the last reload of /etc/ds01/policy.yaml and still enforces the "
        "previous policy (sha256 cdcdcdcdcdcd): /etc/ds01/policy.yaml:2 defaults.max_gpu: "
        "unknown key"
    )
    assert check.fix.startswith("correct /etc/ds01/policy.yaml (ds01 policy validate")
    answer["rejected"] = None
    (check,) = check_policy_reload(host)
    assert check.ok and check.detail == "ds01d enforces /etc/ds01/policy.yaml (sha256 cdcdcdcdcdcd)"

    def refused(sock, method, path):
        raise ConnectionRefusedError(111, "Connection refused")

    assert check_policy_reload(Host(gateway_socket="gw", request=refused)) == []
