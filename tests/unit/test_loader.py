"""Loading the YAML policy: what it accepts, and errors that say ``file:line key.path: reason``."""

from __future__ import annotations

import textwrap

import pytest

from policy.loader import (
    PolicyDocument,
    PolicyError,
    check_policy,
    default_policy_text,
    parse_policy,
)

README_EXAMPLE = """\
defaults:
  max_mig_instances: 1
  max_cpus: 8
  memory: "32g"
  idle_timeout: "48h"
groups:
  researchers:
    max_mig_instances: 2
    memory: "64g"
    allow_full_gpu: true
"""


def policy_error(text: str, source: str = "policy.yaml") -> PolicyError:
    """The PolicyError that parsing ``text`` raises."""
    with pytest.raises(PolicyError) as info:
        parse_policy(text, source)
    return info.value


# ---- accepted ------------------------------------------------------------------------------


def test_accepts_the_built_in_default_policy() -> None:
    """The shipped default policy validates and has defaults and an admins group."""
    doc = parse_policy(default_policy_text(), "default-policy.yaml")
    assert isinstance(doc, PolicyDocument)
    assert doc.source == "default-policy.yaml"
    assert doc.data["defaults"]["memory"] == "32g"
    assert doc.data["groups"]["admins"]["admin"] is True
    assert doc.data["unknown_users"] == "allow"


def test_accepts_the_readme_example_exactly_as_written() -> None:
    """The example policy from the original DS01 README validates unchanged."""
    doc = parse_policy(README_EXAMPLE)
    assert doc.data == {
        "defaults": {"max_mig_instances": 1, "max_cpus": 8, "memory": "32g", "idle_timeout": "48h"},
        "groups": {
            "researchers": {"max_mig_instances": 2, "memory": "64g", "allow_full_gpu": True}
        },
    }


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n", "---\n"])
def test_accepts_an_empty_policy_as_empty_mapping(text: str) -> None:
    """An empty file is a policy with no sections (built-in defaults apply)."""
    assert parse_policy(text).data == {}


@pytest.mark.parametrize(
    "text",
    [
        "defaults:\n  memory: null\n  idle_timeout: ~\n  max_cpus: null\n",
        "defaults:\n  memory: 34359738368\n  idle_timeout: 3600\n  max_cpus: 0.5\n",
        "defaults:\n  memory: 64GiB\n  idle_timeout: 1h30m\n  shm_size: 512m\n",
        "defaults:\n  aggregate:\n    cpus: 16\n",
        "defaults:\n  allowed_mig_profiles: [1g.10gb, 2g.20gb]\n",
        "defaults:\n  bind_mounts: ['{home}', /data/shared]\n",
        "defaults:\n  allow: [privileged, cap_add, devices, sysctls]\n",
        "groups:\n  lab:\n    unix_groups: [ds01-lab]\n    members: [alice]\n",
        "users:\n  alice:\n    max_gpus: 2\n    priority: 50\n",
        "unknown_users: deny\ndirect_access: deny\ncgroup_driver: systemd\n",
        "sample_interval: 30s\nstartup_grace: 15m\nhigh_demand_threshold: 0.8\n",
        "container_types:\n  devcontainer:\n    idle_timeout: 4h\n",
        "exemptions:\n  - user: alice\n    until: '2030-01-31'\n    reason: thesis\n"
        "    from: [idle, max_runtime]\n",
    ],
)
def test_accepts_valid_sections(text: str) -> None:
    """Each documented section and value form validates."""
    assert parse_policy(text).data


def test_policy_error_fields_and_type() -> None:
    """PolicyError is a ValueError carrying source, line, key path and reason separately."""
    error = policy_error("defaults:\n  max_gpus: -1\n", "/etc/ds01/policy.yaml")
    assert isinstance(error, ValueError)
    assert (error.source, error.line, error.path, error.reason) == (
        "/etc/ds01/policy.yaml",
        2,
        "defaults.max_gpus",
        "-1 is below the minimum 0",
    )
    assert str(error) == "/etc/ds01/policy.yaml:2 defaults.max_gpus: -1 is below the minimum 0"


# ---- refused, with the exact message -------------------------------------------------------

LINE_12_BAD_SIZE = """\
# Lab policy
unknown_users: deny

defaults:
  max_cpus: 8
  memory: 32g

groups:
  students:
    # undergraduates
    members: [alice, bob]
    memory: 32 gigs
"""

DID_YOU_MEAN_MEMORY = (
    "unknown key; did you mean memory? (see the configuration reference in README.md)"
)
INDENTATION = (
    "the indentation of this line does not match the lines above: keys of one mapping start "
    "in the same column, and a key's own settings go further right, under it"
)

CASES: list[tuple[str, str, str]] = [
    (
        "bad size on line 12",
        LINE_12_BAD_SIZE,
        "policy.yaml:12 groups.students.memory: '32 gigs' is not a size like 32g",
    ),
    (
        "typo in defaults",
        """\
        defaults:
          max_cpus: 8

          memroy: 32g
        """,
        f"policy.yaml:4 defaults.memroy: {DID_YOU_MEAN_MEMORY}",
    ),
    (
        "typo in a group",
        """\
        defaults:
          memory: 32g
        groups:
          students:
            members: [alice]
            memroy: 16g
        """,
        f"policy.yaml:6 groups.students.memroy: {DID_YOU_MEAN_MEMORY}",
    ),
    (
        "typo in users",
        """\
        users:
          alice:
            max_gpus: 1
            memroy: 64g
        """,
        f"policy.yaml:4 users.alice.memroy: {DID_YOU_MEAN_MEMORY}",
    ),
    (
        "typo at the top level",
        """\
        # comment
        defualts:
          memory: 1g
        """,
        "policy.yaml:2 defualts: unknown key; did you mean defaults? "
        "(see the configuration reference in README.md)",
    ),
    (
        "typo in a flow mapping",
        "defaults: {max_cpus: 8, memroy: 1g}\n",
        f"policy.yaml:1 defaults.memroy: {DID_YOU_MEAN_MEMORY}",
    ),
    (
        "typo inside aggregate",
        """\
        defaults:
          aggregate:
            cpus: 4
            cpu: 4
        """,
        "policy.yaml:4 defaults.aggregate.cpu: "
        "unknown key; did you mean cpus? (see the configuration reference in README.md)",
    ),
    (
        "members in users",
        "users:\n  alice:\n    members: [x]\n",
        "policy.yaml:3 users.alice.members: "
        "unknown key; members belongs to a group (groups.NAME.members), not to a user",
    ),
    (
        "unknown container type",
        "container_types:\n  vscode:\n    idle_timeout: 1h\n",
        "policy.yaml:2 container_types.vscode: "
        "unknown key; see the configuration reference in README.md",
    ),
    (
        "count as a word",
        "defaults:\n  max_gpus: two\n",
        "policy.yaml:2 defaults.max_gpus: 'two' is not of type 'integer'",
    ),
    (
        "quoted boolean",
        "defaults:\n  admin: 'yes'\n",
        "policy.yaml:2 defaults.admin: 'yes' is not of type 'boolean'",
    ),
    (
        "priority as a word",
        "users:\n  alice:\n    priority: high\n",
        "policy.yaml:3 users.alice.priority: 'high' is not of type 'integer'",
    ),
    (
        "profiles not a list",
        "defaults:\n  allowed_mig_profiles: 1g.10gb\n",
        "policy.yaml:2 defaults.allowed_mig_profiles: '1g.10gb' is not of type 'array'",
    ),
    (
        "members not a list",
        "groups:\n  students:\n    members: alice\n",
        "policy.yaml:3 groups.students.members: 'alice' is not of type 'array'",
    ),
    (
        "member not a string",
        "groups:\n  s:\n    members:\n      - alice\n      - 42\n",
        "policy.yaml:5 groups.s.members.1: 42 is not of type 'string'",
    ),
    (
        "defaults a list",
        "defaults: [1, 2]\n",
        "policy.yaml:1 defaults: [1, 2] is not of type 'object'",
    ),
    (
        "empty group",
        "groups:\n  students:\n",
        "policy.yaml:2 groups.students: "
        "empty: its settings belong on the lines below it, indented further than `students:`",
    ),
    (
        "size is a boolean",
        "defaults:\n  memory: true\n",
        "policy.yaml:2 defaults.memory: True is not a size like 32g",
    ),
    (
        "size is a float",
        "defaults:\n  shm_size: 1.5\n",
        "policy.yaml:2 defaults.shm_size: 1.5 is not a size like 32g",
    ),
    (
        "aggregate memory a word",
        "defaults:\n  aggregate:\n    memory: lots\n",
        "policy.yaml:3 defaults.aggregate.memory: 'lots' is not a size like 32g",
    ),
    (
        "bad duration",
        "defaults:\n  idle_timeout: 2 days\n",
        "policy.yaml:2 defaults.idle_timeout: '2 days' is not a duration like 48h",
    ),
    (
        "bad lifecycle duration",
        "container_types:\n  devcontainer:\n    idle_timeout: forever\n",
        "policy.yaml:3 container_types.devcontainer.idle_timeout: "
        "'forever' is not a duration like 48h",
    ),
    (
        "negative count in defaults",
        "defaults:\n  max_gpus: -1\n",
        "policy.yaml:2 defaults.max_gpus: -1 is below the minimum 0",
    ),
    (
        "negative count in a group",
        "groups:\n  students:\n    members: [a]\n    max_containers: -3\n",
        "policy.yaml:4 groups.students.max_containers: -3 is below the minimum 0",
    ),
    (
        "negative count in users",
        "users:\n  alice:\n    pids_limit: -1\n",
        "policy.yaml:3 users.alice.pids_limit: -1 is below the minimum 0",
    ),
    (
        "negative size",
        "defaults:\n  memory: -1\n",
        "policy.yaml:2 defaults.memory: -1 is below the minimum 0",
    ),
    (
        "negative duration",
        "defaults:\n  idle_timeout: -5\n",
        "policy.yaml:2 defaults.idle_timeout: -5 is below the minimum 0",
    ),
    (
        "negative gpu equivalents",
        "defaults:\n  max_gpu_equivalents: -0.5\n",
        "policy.yaml:2 defaults.max_gpu_equivalents: -0.5 is below the minimum 0",
    ),
    (
        "zero cpus",
        "defaults:\n  max_cpus: 0\n",
        "policy.yaml:2 defaults.max_cpus: 0 is less than or equal to the minimum of 0",
    ),
    (
        "threshold above one",
        "high_demand_threshold: 1.5\n",
        "policy.yaml:1 high_demand_threshold: 1.5 is greater than the maximum of 1",
    ),
    (
        "relative bind prefix",
        "defaults:\n  bind_mounts: [relative]\n",
        "policy.yaml:2 defaults.bind_mounts.0: 'relative' does not match '^/|^\\\\{home\\\\}'",
    ),
    (
        "unknown allow feature",
        "defaults:\n  allow:\n    - privileged\n    - everything\n",
        "policy.yaml:4 defaults.allow.1: 'everything' is not one of ['privileged', 'cap_add', "
        "'devices', 'device_cgroup_rules', 'security_opt', 'host_namespaces', 'runtime', "
        "'sysctls', 'low_ports', 'public_ports']",
    ),
    (
        "unknown_users value",
        "# who may use the server\nunknown_users: maybe\n",
        "policy.yaml:2 unknown_users: 'maybe' is not one of ['allow', 'deny']",
    ),
    (
        "unknown_users as YAML boolean",
        "unknown_users: no\n",
        "policy.yaml:1 unknown_users: False is not one of ['allow', 'deny']",
    ),
    (
        "direct_access as YAML boolean",
        "direct_access: yes\n",
        "policy.yaml:1 direct_access: True is not one of ['allow', 'deny']",
    ),
    (
        "exemption without until",
        """\
        exemptions:
          - user: alice
            reason: thesis deadline
        """,
        "policy.yaml:2 exemptions.0: 'until' is a required property",
    ),
    (
        "second exemption without user",
        """\
        exemptions:
          - user: alice
            until: '2030-01-01'
            reason: thesis
          - until: '2030-01-01'
            reason: thesis
        """,
        "policy.yaml:5 exemptions.1: 'user' is a required property",
    ),
    (
        "exemption without reason",
        "exemptions:\n  - user: alice\n    until: '2030-01-01'\n",
        "policy.yaml:2 exemptions.0: 'reason' is a required property",
    ),
    (
        "exemption with an empty reason",
        "exemptions:\n  - user: alice\n    until: '2030-01-01'\n    reason: ''\n",
        "policy.yaml:4 exemptions.0.reason: '' should be non-empty",
    ),
    (
        "exemption with an unknown key",
        "exemptions:\n  - user: alice\n    until: '2030-01-01'\n    reason: x\n    why: y\n",
        "policy.yaml:5 exemptions.0.why: unknown key; see the configuration reference in README.md",
    ),
    (
        "exemption with a bad date",
        "exemptions:\n  - user: alice\n    until: next week\n    reason: x\n",
        "policy.yaml:3 exemptions.0.until: 'next week' is not a 'date'",
    ),
    (
        "exemption from an unknown rule",
        "exemptions:\n  - user: a\n    until: '2030-01-01'\n    reason: x\n    from: [idle, gpu]\n",
        "policy.yaml:5 exemptions.0.from.1: 'gpu' is not one of ['idle', 'max_runtime', 'removal']",
    ),
    (
        "exemptions a mapping",
        "exemptions:\n  user: alice\n",
        "policy.yaml:1 exemptions: {'user': 'alice'} is not of type 'array'",
    ),
    (
        "top-level list",
        "- defaults\n- groups\n",
        "policy.yaml:1: the policy must be a mapping with defaults/groups/users",
    ),
    (
        "top-level scalar",
        "just text\n",
        "policy.yaml:1: the policy must be a mapping with defaults/groups/users",
    ),
    (
        "unclosed flow list",
        "defaults:\n  memory: 32g\n  bind_mounts: [/data\n",
        "policy.yaml:4: not valid YAML: expected ',' or ']', but got '<stream end>'",
    ),
    (
        "bad indentation",
        "defaults:\n  memory: 32g\n max_cpus: 8\n",
        f"policy.yaml:3: not valid YAML: {INDENTATION}",
    ),
    (
        "tab indentation",
        "defaults:\n\tmemory: 1g\n",
        "policy.yaml:2: not valid YAML: a tab character: indent with spaces only, never tabs",
    ),
]


@pytest.mark.parametrize(("text", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_refuses_with_exact_message(text: str, message: str) -> None:
    """Each bad policy raises PolicyError whose text is exactly ``file:line key.path: reason``."""
    assert str(policy_error(textwrap.dedent(text))) == message


def test_message_uses_the_given_source_name() -> None:
    """The file name in the message is the one the caller passed in."""
    error = policy_error(LINE_12_BAD_SIZE, "/etc/ds01/policy.yaml")
    assert str(error) == (
        "/etc/ds01/policy.yaml:12 groups.students.memory: '32 gigs' is not a size like 32g"
    )


def test_a_bad_value_is_reported_before_an_unknown_key() -> None:
    """When a section has both a typo and a bad value, the bad value (more telling) is named."""
    error = policy_error("defaults:\n  memroy: 32g\n  max_gpus: -1\n")
    assert (error.line, error.path) == (3, "defaults.max_gpus")


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("defaults:\n  max_cpus: eight\n", "defaults.max_cpus"),
        ("defaults:\n  max_gpu_equivalents: one\n", "defaults.max_gpu_equivalents"),
        ("defaults:\n  aggregate:\n    cpus: lots\n", "defaults.aggregate.cpus"),
    ],
)
def test_number_type_error_names_number_not_null(text: str, path: str) -> None:
    """A word where a number belongs is reported as 'not a number', not 'not null'."""
    error = policy_error(text)
    assert error.path == path
    assert "'number'" in error.reason
    assert "'null'" not in error.reason


def test_accepts_an_unquoted_exemption_date() -> None:
    """``until: 2030-01-31`` written as plain YAML is a valid date, as in the quoted form."""
    parse_policy("exemptions:\n  - user: alice\n    until: 2030-01-31\n    reason: thesis\n")


@pytest.mark.parametrize(
    "text", ["defaults:\n  idle_timeout: .nan\n", "defaults:\n  max_cpus: .nan\n"]
)
def test_refuses_nan_limits(text: str) -> None:
    """A NaN limit is not a number of anything; the policy is refused."""
    assert policy_error(text).line == 2


def test_refuses_duplicate_keys() -> None:
    """A key written twice in one mapping is an error on the second line, not last-one-wins."""
    error = policy_error("defaults:\n  memory: 32g\n  max_cpus: 8\n  memory: 1p\n")
    assert (error.line, error.path) == (4, "defaults.memory")


# ---- every problem at once, in plain words (issue 14, item 8) -------------------------------


def test_check_policy_reports_every_problem_in_file_order() -> None:
    """Not just the first: each bad value, typo and duplicate gets its own file:line message."""
    text = (
        "default:\n"  # 1
        "  max_gpus: 1\n"
        "groups:\n"
        "  students:\n"  # 4
        "    max_gpu: 1\n"
        "    memory: lots\n"
        "    max_cpus: -2\n"  # 7
        "users:\n"
        "  alice:\n"
        "    priority: high\n"  # 10
        "    priority: 3\n"
    )
    document, errors = check_policy(text)
    assert document is None
    assert [str(e) for e in errors] == [
        "policy.yaml:1 default: unknown key; did you mean defaults? "
        "(see the configuration reference in README.md)",
        "policy.yaml:5 groups.students.max_gpu: unknown key; did you mean max_gpus? "
        "(see the configuration reference in README.md)",
        "policy.yaml:6 groups.students.memory: 'lots' is not a size like 32g",
        "policy.yaml:7 groups.students.max_cpus: -2 is less than or equal to the minimum of 0",
        "policy.yaml:11 users.alice.priority: this key is written twice in one mapping",
    ]


def test_check_policy_of_a_valid_policy_has_no_errors() -> None:
    """A valid policy gives its document and an empty list."""
    document, errors = check_policy("defaults:\n  max_gpus: 1\n")
    assert errors == [] and document is not None and document.data["defaults"]["max_gpus"] == 1


def test_a_close_miss_of_nothing_gets_no_suggestion() -> None:
    """A key like nothing known is reported without a made-up suggestion."""
    (error,) = check_policy("defaults:\n  colour: blue\n")[1]
    assert error.reason == "unknown key; see the configuration reference in README.md"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "defaults:\nmax_gpus: 1\n",
            [
                "policy.yaml:1 defaults: empty: its settings belong on the lines below it, "
                "indented further than `defaults:`",
                "policy.yaml:2 max_gpus: unknown key at the top level: max_gpus is a limit, so "
                "it belongs under defaults:, a group or a user (indent it under one of them)",
            ],
        ),
        (
            "groups:\n  students:\n    members: [alice]\n  max_gpus: 1\n",
            [
                "policy.yaml:4 groups.max_gpus: max_gpus is a limit, not a group: "
                "indent it further, under the group above it",
            ],
        ),
        (
            "users:\n  alice:\n  memory: 1g\n",
            [
                "policy.yaml:2 users.alice: empty: its settings belong on the lines below it, "
                "indented further than `alice:`",
                "policy.yaml:3 users.memory: memory is a limit, not a user: "
                "indent it further, under the user above it",
            ],
        ),
    ],
)
def test_indentation_mistakes_are_named_in_plain_words(text: str, message: list[str]) -> None:
    """No "None is not of type 'object'": the message says where the setting belongs."""
    assert [str(e) for e in check_policy(text)[1]] == message
    assert "is not of type" not in str(policy_error(text))
