"""``ds01 setup``: a student's first run. Checks that DS01 answers, says what they may use in
plain words, explains GPUs and MIG for their group, and offers to make (and launch) a first
project. It keeps no state: running it again asks again.

The CLI's pieces come in as parameters (``api`` calls ds01d, ``run`` runs a command, ``show``
formats a policy value), so this module needs nothing from cli.py.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import projects
from .prompts import Prompter

Api = Callable[[str, str], Any]
Show = Callable[[str, Any], str]


@dataclass
class SetupOptions:
    project: str | None = None
    template: str | None = None
    directory: str | None = None
    launch: bool | None = None  # None: ask (default yes)
    make_project: bool = True
    templates_dir: str | None = None
    base_image: str | None = None
    gpus: str = "1"


def plain_limits(d: dict[str, Any], show: Show) -> list[str]:
    """The user's limits from ``GET limits``, as sentences."""
    v = d["limits"]
    lines = [
        f"You are {d['user']}, in group {d['group']}" + (" (an admin)." if d["admin"] else ".")
    ]
    mig, whole = v.get("max_mig_instances"), v.get("max_gpus")
    if v.get("allow_full_gpu") and whole:
        gpu = f"up to {show('max_gpus', whole)} whole GPU(s) and {show('max_mig_instances', mig)} MIG instance(s)"
    elif mig:
        gpu = f"up to {show('max_mig_instances', mig)} MIG instance(s) (a slice of a GPU), no whole GPUs"
    else:
        gpu = "no GPU (ask an admin if you need one)"
    lines.append(f"GPUs: {gpu} at once.")
    if v.get("allowed_mig_profiles"):
        lines.append(
            f"MIG profiles you may get: {show('allowed_mig_profiles', v['allowed_mig_profiles'])}."
        )
    lines.append(
        f"Each container: {show('max_cpus', v.get('max_cpus'))} CPUs, "
        f"{show('memory', v.get('memory'))} memory; at most "
        f"{show('max_containers', v.get('max_containers'))} containers."
    )
    idle, runtime = v.get("idle_timeout"), v.get("max_runtime")
    lines.append(
        "An idle container is stopped after "
        + (show("idle_timeout", idle) if idle else "no set time (never for idleness)")
        + (f"; any container after {show('max_runtime', runtime)}." if runtime else ".")
    )
    wait = v.get("gpu_wait")
    lines.append(
        f"When GPUs are busy a request is answered at once; to wait in the queue (priority "
        f"{v.get('priority', 0)}) add --label ds01.wait=DURATION, at most "
        f"{show('gpu_wait', wait)}."
        if wait
        else "When every GPU you may use is busy, a request is refused at once (no queue for you)."
    )
    return lines


def gpu_summary(g: dict[str, Any]) -> list[str]:
    """What the server has, from ``GET gpus``: free devices by kind."""
    devices = g.get("devices") or []
    if not devices:
        return ["This server has no GPUs DS01 hands out right now."]
    free: dict[str, int] = {}
    for dev in devices:
        kind = f"MIG {dev['profile']}" if dev.get("kind") == "mig" else "whole GPU"
        free.setdefault(kind, 0)
        free[kind] += dev.get("state") == "free"
    parts = ", ".join(f"{kind}: {n} free" for kind, n in sorted(free.items()))
    return [
        f"This server has {len(devices)} devices ({parts}).",
        "A MIG instance is a slice of a GPU with its own memory; to CUDA it is one GPU "
        "(ds01 concepts mig).",
    ]


def run_setup(
    opts: SetupOptions,
    ask: Prompter,
    api: Api,
    run: Callable[[list[str]], int],
    echo: Callable[[str], None],
    show: Show,
    user: str,
    home: str,
) -> int:
    """The setup conversation; 0 when everything asked for was done."""
    echo("Step 1 of 3: reaching DS01")
    try:
        limits = api("GET", "limits")
    except Exception as exc:  # the CLI's Failure: its message says what to do
        echo(f"  DS01 did not answer: {exc}")
        echo("  Plain docker needs DS01 too. Ask your admins if this persists.")
        return 1
    echo("  ok: ds01d answers and knows you.")
    echo("")
    echo("Step 2 of 3: what you may use")
    for line in plain_limits(limits, show):
        echo(f"  {line}")
    try:
        for line in gpu_summary(api("GET", "gpus")):
            echo(f"  {line}")
    except Exception:  # the GPU view is a courtesy; setup goes on without it
        pass
    echo("  Details: ds01 limits; ideas: ds01 concepts")
    echo("")
    echo("Step 3 of 3: a first project")
    if not opts.make_project or not ask.confirm(
        "Create a project folder (Dockerfile, Dev Container, README)?", True
    ):
        echo("  No project made. Later: ds01 project init NAME")
        return 0
    return _make_project(opts, ask, run, echo, user, home)


def _make_project(
    opts: SetupOptions,
    ask: Prompter,
    run: Callable[[list[str]], int],
    echo: Callable[[str], None],
    user: str,
    home: str,
) -> int:
    name = opts.project or ask.text("Project name:", "my-first-project")
    templates = projects.list_templates(projects.template_dirs(opts.templates_dir))
    default = opts.template or projects.default_template(templates)
    template_name = opts.template or ask.select(
        "Template (the Dockerfile it starts from):",
        [(t.name, f"{t.name}: {t.description}") for t in templates.values()],
        default,
    )
    template = templates.get(template_name)
    if template is None:
        echo(f"  no template {template_name!r}. To fix: pick one of {', '.join(templates)}")
        return 2
    folder = Path(opts.directory or os.path.join(home, name)).expanduser()
    for path in projects.init_project(
        name, folder, template, base_image=opts.base_image, gpus=opts.gpus
    ):
        echo(f"  wrote {path}")
    commands = projects.launch_commands(folder, user)
    launch = (
        opts.launch
        if opts.launch is not None
        else ask.confirm("Build and start it now (docker build, then docker run)?", True)
    )
    if launch:
        code = projects.launch(commands, run, echo)
        if code != 0:
            echo(
                f"  launching failed (exit {code}); the project is there. Retry: ds01 project launch {folder}"
            )
            return 1
        echo(f"  started. Inside it: docker exec -it {name} sh   Yours: ds01 ps")
    else:
        echo(f"  Later: ds01 project launch {folder}")
    echo(
        "  VS Code: connect with Remote-SSH, open the folder, 'Dev Containers: Reopen in Container'."
    )
    return 0
