"""``ds01 guide [TASK]`` / ``ds01 --guided``: the tasks students do, one step at a time, each
choice explained before it is made, each command shown before it runs.

Like setup_wizard, it gets the CLI's pieces as parameters (``api``, ``run``, ``echo``)."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import projects
from .prompts import Prompter

TASKS = {
    "get-gpu": "get a GPU: start a container with one",
    "devcontainer": "start a Dev Container: a project folder for VS Code (or plain docker)",
    "keep-alive": "keep a long job alive: stop DS01 from stopping an idle-looking container",
    "free-gpu": "free a GPU: give a device back when you are done",
}


@dataclass
class Tools:
    api: Callable[[str, str], Any]
    run: Callable[[list[str]], int]
    echo: Callable[[str], None]
    user: str
    home: str
    templates_dir: str | None = None


def run_guide(task: str | None, ask: Prompter, tools: Tools) -> int:
    if task is None:
        task = ask.select("What do you want to do?", list(TASKS.items()), "get-gpu")
    steps = {"get-gpu": get_gpu, "devcontainer": devcontainer, "keep-alive": keep_alive,
             "free-gpu": free_gpu}  # fmt: skip
    if task not in steps:
        tools.echo(f"no task {task!r}. To fix: pick one of {', '.join(TASKS)}")
        return 2
    return steps[task](ask, tools)


def _confirm_run(ask: Prompter, tools: Tools, cmd: list[str], question: str) -> int | None:
    """Show ``cmd``; run it if the user agrees. Its exit code, or None when declined."""
    tools.echo(f"  The command: {shlex.join(cmd)}")
    if not ask.confirm(question, True):
        tools.echo("  Not run. You can run the command above yourself at any time.")
        return None
    return tools.run(cmd)


def get_gpu(ask: Prompter, tools: Tools) -> int:
    echo = tools.echo
    limits = tools.api("GET", "limits")["limits"]
    echo("Step 1: what you may get")
    if limits.get("allow_full_gpu") and limits.get("max_gpus"):
        echo(f"  You may hold {limits['max_gpus']} whole GPU(s) and MIG instances.")
    elif limits.get("max_mig_instances"):
        echo(f"  You may hold {limits['max_mig_instances']} MIG instance(s): a slice of a GPU.")
    else:
        echo("  Your limits give you no GPU. Ask your admins (ds01 limits shows why).")
        return 1
    echo("  You ask for a count (--gpus 1); DS01 picks a device you may have.")
    name = ask.text("Container name:", f"{tools.user}-gpu")
    image = ask.text(
        "Image (it must not need root when it runs):", "nvidia/cuda:12.4.1-runtime-ubuntu22.04"
    )
    cmd = ["docker", "run", "-d", "--name", name, "--gpus", "1"]
    if limits.get("gpu_wait"):
        echo("Step 2: waiting")
        echo("  If every device you may use is busy, the request can wait in the queue")
        echo("  (ds01 concepts queue). Without waiting it is refused at once.")
        if ask.confirm("Wait up to 10 minutes for a GPU?", True):
            cmd += ["--label", "ds01.wait=10m"]
    cmd += [image, "sleep", "infinity"]
    echo("Step 3: start it")
    echo("  It sleeps until you run something in it: docker exec -it NAME sh")
    code = _confirm_run(ask, tools, cmd, "Start it now?")
    if code is None:
        return 0
    if code == 0:
        echo(f"  Done: {name} has a GPU. See it in ds01 ps; free it with ds01 guide free-gpu.")
    return code


def devcontainer(ask: Prompter, tools: Tools) -> int:
    echo = tools.echo
    echo("Step 1: a project folder")
    echo("  A Dev Container is a folder with .devcontainer/devcontainer.json; VS Code opens")
    echo("  it inside a container. ds01 project init writes one that asks for a GPU.")
    name = ask.text("Project name:", "my-project")
    templates = projects.list_templates(projects.template_dirs(tools.templates_dir))
    template = ask.select(
        "Template:",
        [(t.name, f"{t.name}: {t.description}") for t in templates.values()],
        projects.default_template(templates),
    )
    folder = Path(tools.home) / name
    for path in projects.init_project(name, folder, templates[template]):
        echo(f"  wrote {path}")
    echo("Step 2: open it")
    echo("  In VS Code: Remote-SSH to this server, open the folder, then")
    echo("  'Dev Containers: Reopen in Container'. Or start it here with docker:")
    commands = projects.launch_commands(folder, tools.user)
    echo("  " + projects.show(commands).replace("\n", "\n  "))
    if not ask.confirm("Build and start it now?", True):
        echo(f"  Later: ds01 project launch {folder}")
        return 0
    code = projects.launch(commands, tools.run, echo)
    if code == 0:
        echo(f"  Done: container {name} runs as you. ds01 ps lists it under project {name}.")
    return code


def _pick_container(ask: Prompter, tools: Tools, gpu_only: bool) -> dict | None:
    rows = tools.api("GET", "containers")["containers"]
    rows = [r for r in rows if r.get("devices")] if gpu_only else rows
    if not rows:
        tools.echo("  You have no " + ("container holding a GPU." if gpu_only else "containers."))
        return None
    choices = [
        (r["name"], f"{r['name']} ({r['state']}, {len(r.get('devices') or [])} GPU)") for r in rows
    ]
    name = ask.select("Which container?", choices, rows[0]["name"])
    return next(r for r in rows if r["name"] == name)


def keep_alive(ask: Prompter, tools: Tools) -> int:
    echo = tools.echo
    echo("Step 1: why containers stop")
    echo("  A container that uses no CPU, GPU or network for your idle_timeout is stopped,")
    echo("  so its GPU goes to others (ds01 concepts idle). A job waiting on I/O can look idle.")
    row = _pick_container(ask, tools, gpu_only=False)
    if row is None:
        return 1
    echo("Step 2: keep it alive")
    echo("  One keep-alive counts for 24 h (keepalive_max). For longer, repeat it, or have")
    echo("  your job run: touch /tmp/ds01-keepalive (inside the container) now and then.")
    echo("  It does not lift max_runtime.")
    if not ask.confirm(f"Keep {row['name']} alive for 24 h now?", True):
        return 0
    tools.api("POST", f"keepalive/{row['id']}")
    echo(f"  Done: {row['name']} counts as active for the next 24 h.")
    return 0


def free_gpu(ask: Prompter, tools: Tools) -> int:
    echo = tools.echo
    echo("Step 1: which GPU")
    row = _pick_container(ask, tools, gpu_only=True)
    if row is None:
        return 0
    echo("Step 2: stop or remove")
    echo("  docker stop keeps the container (and its GPU for gpu_hold_after_stop, so a restart")
    echo(
        "  gets it back); docker rm -f removes it and frees the GPU at once (ds01 concepts holds)."
    )
    how = ask.select(
        "How?",
        [("rm", "remove it: the GPU is free now"), ("stop", "stop it: start it again later")],
        "rm",
    )
    cmd = ["docker", "rm", "-f", row["name"]] if how == "rm" else ["docker", "stop", row["name"]]
    code = _confirm_run(ask, tools, cmd, "Run it now?")
    if code == 0:
        echo(
            f"  Done: {row['name']} " + ("removed; its GPU is free." if how == "rm" else "stopped.")
        )
    return code or 0
