"""The newcomer's CLI without a daemon: project files (golden), launch commands, project names
from labels, help with examples on every command, concepts covering every policy key."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest

from ds01cli import concepts, help_texts, projects

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "project"
SCHEMA = Path(__file__).resolve().parents[2] / "config" / "policy.schema.json"
BUILTINS = projects.list_templates([projects.BUILTIN_TEMPLATES])


def files_under(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_project_init_matches_the_golden_files(tmp_path, name):
    """Each built-in template writes exactly tests/fixtures/project/<template>/ (UPDATE_GOLDEN=1
    rewrites them after a deliberate change)."""
    out = tmp_path / "my-thesis"
    projects.init_project("my-thesis", out, BUILTINS[name])
    got = files_under(out)
    golden = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        for rel, text in got.items():
            (golden / rel).parent.mkdir(parents=True, exist_ok=True)
            (golden / rel).write_text(text)
    assert got == files_under(golden)


def test_devcontainer_json_asks_for_a_gpu_labels_the_project_and_leaves_the_user_alone(tmp_path):
    out = tmp_path / "p"
    projects.init_project("p", out, BUILTINS["pytorch"])
    config = json.loads((out / ".devcontainer" / "devcontainer.json").read_text())
    assert config["runArgs"] == ["--gpus", "1", "--label", "org.ds01.project=p"]
    assert config["updateRemoteUserUID"] is False and "remoteUser" not in config
    projects.init_project("q", tmp_path / "q", BUILTINS["pytorch"], gpus=None)
    config = json.loads((tmp_path / "q" / ".devcontainer" / "devcontainer.json").read_text())
    assert config["runArgs"] == ["--label", "org.ds01.project=q"]
    assert "hostRequirements" not in config


def test_a_site_template_hides_the_builtin_and_fills_its_placeholders(tmp_path):
    site = tmp_path / "site" / "pytorch"
    site.mkdir(parents=True)
    (site / "template.yaml").write_text("description: the lab's torch\nbase_image: lab/torch:1\n")
    (site / "Dockerfile").write_text("FROM {{base_image}}\nWORKDIR /w/{{project}}\n")
    found = projects.list_templates(projects.template_dirs(str(tmp_path / "site"), env={}))
    assert found["pytorch"].description == "the lab's torch" and not found["pytorch"].builtin
    assert found["cuda"].builtin
    projects.init_project("x", tmp_path / "x", found["pytorch"], base_image="other:2")
    assert (tmp_path / "x" / "Dockerfile").read_text() == "FROM other:2\nWORKDIR /w/x\n"
    assert not (tmp_path / "x" / "template.yaml").exists()


def test_project_init_refuses_bad_names_and_full_folders(tmp_path):
    with pytest.raises(projects.ProjectError, match="is not a project name"):
        projects.init_project("My Thesis", tmp_path / "a", BUILTINS["cuda"])
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "keep.txt").write_text("mine")
    with pytest.raises(projects.ProjectError, match=r"is not empty\. To fix: pick another name"):
        projects.init_project("b", tmp_path / "b", BUILTINS["cuda"])


def test_launch_commands_come_from_devcontainer_json(tmp_path):
    out = tmp_path / "my-thesis"
    projects.init_project("my-thesis", out, BUILTINS["cuda"])
    assert projects.launch_commands(out, "alice") == [
        ["docker", "build", "-t", "alice/my-thesis:latest", "-f", f"{out}/Dockerfile", str(out)],
        ["docker", "run", "-d", "--name", "my-thesis", "--gpus", "1", "--label",
         "org.ds01.project=my-thesis", "-v", f"{out}:/workspaces/my-thesis", "-w",
         "/workspaces/my-thesis", "alice/my-thesis:latest"],
    ]  # fmt: skip
    with pytest.raises(projects.ProjectError, match=r"is not a project\. To fix"):
        projects.launch_commands(tmp_path, "alice")


@pytest.mark.parametrize(
    ("labels", "project"),
    [
        ({"org.ds01.project": "thesis"}, "thesis"),
        ({"devcontainer.local_folder": "/home/a/vision/"}, "vision"),
        ({"org.ds01.project": "a", "devcontainer.local_folder": "/home/a/b"}, "a"),
        ({"ds01.user": "a"}, ""),
        (None, ""),
    ],
)
def test_project_of_labels(labels, project):
    assert projects.project_of(labels) == project


def cli_parser() -> argparse.ArgumentParser:
    from ds01cli.cli import build_parser

    return build_parser()


def test_every_command_help_has_an_example():
    """`ds01 CMD --help` ends with at least one example, and `--info` works, for every command."""
    keys = [key for key, _, _ in help_texts.subcommands(cli_parser())]
    assert {"limits", "keepalive", "setup", "project init", "concepts", "doctor"} <= set(keys)
    for key, sub, _ in help_texts.subcommands(cli_parser()):
        text = sub.format_help()
        assert "examples:\n  " in text, key
        assert "--info" in text, key


def test_doctor_help_has_an_example(capsys):
    """`ds01 doctor` has its own parser; its --help has examples too."""
    from ds01cli.cli import main

    assert main(["doctor", "--help"]) == 0
    assert "examples:" in capsys.readouterr().out


def test_bare_ds01_shows_an_overview_and_version_works(capsys):
    from ds01cli.cli import main

    assert main([]) == 0
    assert "ds01 setup" in capsys.readouterr().out
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("ds01 ")


def test_keepalive_help_says_24_hours():
    text = help_texts.HELP["keepalive"].summary
    assert "24 h" in text and "now" not in text


# Keys only admins meet: how the policy file is laid out, and server settings no student sees.
NOT_FOR_STUDENTS: set[str] = set()


def schema_keys() -> set[str]:
    schema = json.loads(SCHEMA.read_text())
    keys = set(schema["properties"])
    for definition in schema["$defs"].values():
        keys |= set(definition.get("properties") or {})
    return keys - NOT_FOR_STUDENTS


def test_concepts_cover_every_policy_key():
    """A new policy key fails this test until a topic explains it."""
    explained = {key for topic in concepts.TOPICS for key in topic.keys}
    assert schema_keys() - explained == set()
    for key in schema_keys():
        found = concepts.find(key)
        assert found is not None and key in concepts.render(found), key


def test_concepts_topics_and_unknown_topic():
    for name in ("mig", "gpu-equivalents", "queue", "idle", "holds", "keepalive", "refusals"):
        code, text = concepts.concepts(name)
        assert code == 0 and text.startswith(concepts.BY_NAME[name].title)
    code, text = concepts.concepts("nonsense")
    assert code == 2 and text.startswith("no topic 'nonsense'. To fix: pick one of these.")


def test_completion_and_man_page_come_from_the_parser(capsys, tmp_path):
    """bash and zsh completion name the newer commands; bash accepts the script; the man page
    documents every command."""
    import subprocess

    from ds01cli.cli import main

    assert main(["completion", "bash"]) == 0
    script = capsys.readouterr().out
    assert "setup" in script and "concepts" in script
    (tmp_path / "c.bash").write_text(script)
    assert subprocess.run(["bash", "-n", str(tmp_path / "c.bash")]).returncode == 0
    assert main(["completion", "zsh"]) == 0
    assert capsys.readouterr().out.startswith("#compdef ds01")
    assert main(["man"]) == 0
    page = capsys.readouterr().out
    assert page.startswith(".TH DS01 ")
    assert "ds01 project init" in page and "ds01 keepalive" in page
