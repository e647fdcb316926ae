"""What each ``ds01`` command says about itself, in three depths.

``--help``: the summary (exactly what the command does) and examples; ``--info`` or
``ds01 help CMD``: the reference, with what to read next. (The fourth depth is
``ds01 concepts``; the fifth, ``--guided``, lives in guided.py.) The parser stays in cli.py;
``decorate`` writes these texts into it, so they live in one place.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass


@dataclass(frozen=True)
class CommandHelp:
    summary: str  # one line: what the command does, exactly
    examples: tuple[tuple[str, str], ...]  # (command line, what it does)
    info: str = ""  # the reference: details, output, related commands


HELP: dict[str, CommandHelp] = {
    "limits": CommandHelp(
        "show your limits, what you use now, when your containers stop, your place in the GPU queue",
        (("ds01 limits", "your limits in a table"), ("ds01 limits --json", "the same for scripts")),
        "Each row says what you use (IN USE), the most you may (LIMIT) and which part of the "
        "policy set it (FROM: defaults, a group, or your own entry). Below the table: the GPUs "
        "you hold and since when, containers that will be stopped for idleness or runtime, and "
        "requests of yours waiting in the GPU queue. See ds01 concepts limits, gpu-equivalents, idle.",
    ),
    "ps": CommandHelp(
        "list your containers with their project, GPUs, idle time, runtime and when they stop",
        (
            ("ds01 ps", "your containers"),
            ("ds01 ps --no-trunc", "full container IDs and device UUIDs"),
            ("ds01 ps --all", "everyone's (admins)"),
        ),
        "PROJECT is the container's org.ds01.project label (set by ds01 project launch and "
        "devcontainer.json files from ds01 project init), else the folder a Dev Container was "
        "opened from. STOPS IN says when the lifecycle loop will stop the container and why "
        "(idle or max_runtime). See ds01 concepts idle, projects.",
    ),
    "why": CommandHelp(
        "show every decision DS01 made about one of your containers (created, refused, GPUs, stops)",
        (("ds01 why my-thesis", "the decisions about container my-thesis"),),
        "CONTAINER is a name or ID of one of your containers. Each line is one recorded event: "
        "time, what happened, allowed or denied, and the reason. See ds01 concepts refusals.",
    ),
    "keepalive": CommandHelp(
        "keep a container from being stopped as idle for the next 24 h (keepalive_max)",
        (
            ("ds01 keepalive my-thesis", "my-thesis counts as active for 24 h from now"),
            ("docker exec my-thesis touch /tmp/ds01-keepalive", "the same from inside"),
        ),
        "One keep-alive counts for the policy's keepalive_max (24 h unless your admins changed "
        "it); call it again, or touch /tmp/ds01-keepalive inside the container from your job, "
        "to go on. It does not lift max_runtime. See ds01 concepts keepalive.",
    ),
    "gpus": CommandHelp(
        "list every GPU and MIG device with its full UUID, who holds it since when, and the queue",
        (
            ("ds01 gpus", "devices, their state and holders"),
            ("docker run --gpus device=MIG-... IMAGE", "ask for one device by the UUID shown"),
        ),
        "UUID is shown whole, to paste into --gpus device=UUID. GPUEQ is the device's size in "
        "GPU-equivalents. Other users' holdings show as (another user) unless you are an admin. "
        "See ds01 concepts mig, gpu-equivalents, queue.",
    ),
    "users": CommandHelp(
        "list every user's containers and GPU-equivalents against their limits (admins)",
        (("ds01 users", "one row per user"),),
    ),
    "slices": CommandHelp(
        "show each user's aggregate CPU, memory and task limits and what they use now",
        (("ds01 slices", "your own slice (admins: everyone's)"),),
        "The aggregate limits cap all of a user's containers together; the kernel enforces "
        "them in the user's cgroup. See ds01 concepts limits.",
    ),
    "status": CommandHelp(
        "one screen: devices free and in use, the queue; for admins also holders and users near limits",
        (("ds01 status", "the server at a glance"),),
        "For everyone: how many devices are free and how many requests wait. Admins also see "
        "who holds each device and which users are near their limits. Your own view: ds01 limits.",
    ),
    "events": CommandHelp(
        "print the audit log: every decision, allocation and stop (admins)",
        (("ds01 events -n 20", "the last 20 events"), ("ds01 events --follow", "and new ones")),
    ),
    "policy": CommandHelp(
        "validate, explain and compare policy files",
        (("ds01 policy explain $USER", "your effective limits and where each comes from"),),
    ),
    "policy validate": CommandHelp(
        "check a policy file: file:line key: reason for every problem (exit 1); warnings for "
        "users, Unix groups and MIG profiles the host does not have (exit 0)",
        (
            ("ds01 policy validate /etc/ds01/policy.yaml", "check the live policy"),
            ("ds01 policy validate new.yaml --json", "the same, as JSON"),
        ),
    ),
    "policy explain": CommandHelp(
        "show the limits the running ds01d applies to a user, and which part of the policy set each",
        (
            ("ds01 policy explain $USER", "your own limits, as ds01d applies them"),
            (
                "ds01 policy explain alice --file new.yaml --groups students",
                "what a policy file would give alice if she were in students",
            ),
        ),
    ),
    "policy diff": CommandHelp(
        "list the effective limits that change for each user between two policy files",
        (("ds01 policy diff /etc/ds01/policy.yaml new.yaml", "what a change would do"),),
    ),
    "import-ds01": CommandHelp(
        "convert the original DS01's resource-limits.yaml into a DS01 policy",
        (("ds01 import-ds01 config/runtime/resource-limits.yaml -o policy.yaml", "convert"),),
    ),
    "init": CommandHelp(
        "write .devcontainer/devcontainer.json for an existing folder, asking for a GPU",
        (
            ("ds01 init", "the current folder, default CUDA image, one GPU"),
            ("ds01 init ~/code --image pytorch/pytorch:latest", "another folder and image"),
            ("ds01 init --no-gpu --force", "no GPU; overwrite an existing file"),
        ),
        "FOLDER (default: the current one) gets .devcontainer/devcontainer.json using --image "
        "as it is (no Dockerfile). --no-gpu leaves out the GPU request; --force overwrites an "
        "existing file. For a new project with a Dockerfile and README use ds01 project init.",
    ),
    "doctor": CommandHelp(
        "check this server's DS01 deployment (run as root); each problem with its fix",
        (("sudo ds01 doctor", "check everything"),),
    ),
    "setup": CommandHelp(
        "first-run guide: check you reach DS01, explain your limits and GPUs, make a first project",
        (
            ("ds01 setup", "interactive, on a terminal"),
            ("ds01 setup --yes", "the same with the defaults, no questions"),
            ("ds01 setup --yes --project my-thesis --template pytorch --launch", "scripted"),
        ),
        "Re-run it whenever you like: it keeps no state. It reads your limits from ds01d, says "
        "in plain words what you may use, and can create (and launch) a first project with "
        "ds01 project init. On a terminal it asks; with --yes it takes the defaults and the flags.",
    ),
    "project": CommandHelp(
        "make and start projects: a folder with a Dockerfile, devcontainer.json and README",
        (("ds01 project init my-thesis", "a new project from the default template"),),
    ),
    "project init": CommandHelp(
        "create a project folder: Dockerfile from a template, .devcontainer/devcontainer.json, README",
        (
            ("ds01 project init my-thesis", "~/my-thesis from the default (pytorch) template"),
            ("ds01 project init vision --template huggingface --dir ~/work/vision", "elsewhere"),
            ("ds01 project templates", "the templates this server offers"),
        ),
        "The Dockerfile comes from the template (the lab's own in /etc/ds01/templates or "
        "$DS01_TEMPLATES, else a built-in); --base-image replaces the template's base image. "
        "The devcontainer.json asks for --gpus (default 1; --no-gpu for none), labels the "
        "container org.ds01.project=NAME, and leaves the user to DS01 (the container runs as "
        "you). Nothing else is needed: open the folder in VS Code, or use plain docker.",
    ),
    "project launch": CommandHelp(
        "build the project's image and start its container (docker, or --devcontainer)",
        (
            ("ds01 project launch", "build and start the project in the current folder"),
            ("ds01 project launch ~/my-thesis --print", "show the docker commands only"),
            ("ds01 project launch --devcontainer", "start it with the Dev Containers CLI"),
        ),
        "Reads .devcontainer/devcontainer.json and runs docker build -t $USER/NAME, then "
        "docker run -d --name NAME with its runArgs and the folder mounted at "
        "/workspaces/FOLDER. Then: docker exec -it NAME bash.",
    ),
    "project templates": CommandHelp(
        "list the project templates this server offers (the lab's and the built-ins)",
        (("ds01 project templates", "name, where it comes from, description"),),
    ),
    "concepts": CommandHelp(
        "explain an idea DS01 uses: MIG, GPU-equivalents, the queue, idle stops, holds, ...",
        (
            ("ds01 concepts", "the list of topics"),
            ("ds01 concepts mig", "one topic"),
            ("ds01 concepts gpu_wait", "the topic that explains a policy key"),
        ),
    ),
    "help": CommandHelp(
        "show the reference for a command (the same as CMD --info)",
        (("ds01 help keepalive", "what keepalive does, in full"),),
    ),
    "guide": CommandHelp(
        "walk through a task step by step: get a GPU, start a Dev Container, keep a job alive, free a GPU",
        (
            ("ds01 guide", "choose a task"),
            ("ds01 guide get-gpu", "get a GPU, each choice explained"),
            ("ds01 --guided", "the same as ds01 guide"),
        ),
    ),
    "completion": CommandHelp(
        "print a shell completion script for bash or zsh",
        (
            ("source <(ds01 completion bash)", "complete ds01 in this bash"),
            ("ds01 completion zsh > ~/.zfunc/_ds01", "zsh (with ~/.zfunc in fpath)"),
        ),
    ),
    "man": CommandHelp(
        "print the ds01(1) man page, generated from the commands themselves",
        (("ds01 man | man -l -", "read it"),),
    ),
}


class _InfoAction(argparse.Action):
    """``--info``: print the command's reference and exit."""

    def __init__(self, option_strings: list[str], dest: str, key: str = "", **kwargs: object):
        super().__init__(option_strings, dest, nargs=0, help="the full reference, with examples")
        self.key = key

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(info(self.key, parser))
        parser.exit(0)


def examples_text(key: str) -> str:
    entry = HELP.get(key)
    if not entry or not entry.examples:
        return ""
    width = max(len(cmd) for cmd, _ in entry.examples)
    return "examples:\n" + "\n".join(
        f"  {cmd.ljust(width)}  # {what}" for cmd, what in entry.examples
    )


def info(key: str, parser: argparse.ArgumentParser | None = None) -> str:
    """The reference for command ``key``: summary, details, usage and examples."""
    entry = HELP.get(key)
    if entry is None:
        return f"no reference for {key!r}"
    parts = [f"ds01 {key}: {entry.summary}"]
    if entry.info:
        parts.append(entry.info)
    if parser is not None:
        parts.append(parser.format_usage().strip())
        options = []
        for action in parser._actions:
            if action.help not in (None, argparse.SUPPRESS) and not isinstance(
                action, (argparse._HelpAction, _InfoAction)
            ):
                names = ", ".join(action.option_strings) or action.dest
                options.append(f"  {names}: {action.help}")
        parts.append("\n".join(options))
    parts.append(examples_text(key))
    return "\n\n".join(p for p in parts if p)


def subcommands(parser: argparse.ArgumentParser, prefix: str = ""):
    """(key, parser) for every subcommand under ``parser``, depth first."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                key = f"{prefix} {name}".strip()
                yield key, sub, action
                yield from subcommands(sub, key)


def decorate(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Write summaries, examples and ``--info`` into every subcommand of the ``ds01`` parser."""
    for key, sub, action in subcommands(parser):
        entry = HELP.get(key)
        if entry is None:
            continue
        name = key.rsplit(" ", 1)[-1]
        for choice in action._choices_actions:
            if choice.dest == name:
                choice.help = entry.summary
        sub.description = entry.summary[0].upper() + entry.summary[1:] + "."
        sub.epilog = examples_text(key) + "\n\nMore: ds01 help " + key
        sub.formatter_class = argparse.RawDescriptionHelpFormatter
        if "--info" not in sub._option_string_actions:
            sub.add_argument("--info", action=_InfoAction, key=key)
    return parser


def find_parser(parser: argparse.ArgumentParser, words: list[str]):
    """The subparser for ``ds01 help WORDS``, with its key, or None."""
    key = " ".join(words)
    for k, sub, _ in subcommands(parser):
        if k == key:
            return k, sub
    return None
