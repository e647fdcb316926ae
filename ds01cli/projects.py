"""Projects: ``ds01 project init`` (a folder from a template) and ``ds01 project launch``.

A project is a folder with a Dockerfile, a ``.devcontainer/devcontainer.json`` and a README.
Nothing here is required: the folder works with plain ``docker``, with VS Code Dev
Containers and with ``ds01 project launch`` alike. The devcontainer.json is the one place
the container's settings live; ``launch`` turns it into docker commands.

A container's project is its ``org.ds01.project`` label (not ``ds01.*``: those are DS01's own
and dropped from user creates), else the folder a Dev Container was opened from.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

PROJECT_LABEL = "org.ds01.project"
DEVCONTAINER_FOLDER_LABEL = "devcontainer.local_folder"
SITE_TEMPLATES = "/etc/ds01/templates"
BUILTIN_TEMPLATES = Path(__file__).resolve().parent / "templates"
DEFAULT_TEMPLATE = "pytorch"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
# Files a template folder holds for DS01, not for the project.
TEMPLATE_META = {"template.yaml"}


class ProjectError(Exception):
    """A project could not be made or launched; the message says what to do."""


@dataclass(frozen=True)
class Template:
    name: str
    folder: Path
    description: str
    base_image: str
    builtin: bool


def template_dirs(extra: str | None = None, env: Mapping[str, str] | None = None) -> list[Path]:
    """Where templates are looked up, first wins: ``extra``, $DS01_TEMPLATES, the site, built-ins."""
    env = os.environ if env is None else env
    dirs = [extra] if extra else []
    dirs += [d for d in env.get("DS01_TEMPLATES", "").split(":") if d]
    dirs.append(SITE_TEMPLATES)
    return [Path(d) for d in dirs] + [BUILTIN_TEMPLATES]


def _read_template(folder: Path, builtin: bool) -> Template | None:
    meta_file = folder / "template.yaml"
    if not (folder / "Dockerfile").is_file():
        return None
    try:
        meta = yaml.safe_load(meta_file.read_text(encoding="utf-8")) if meta_file.exists() else {}
    except (OSError, yaml.YAMLError):
        meta = None
    if not isinstance(meta, dict):
        meta = {}
    return Template(
        name=folder.name,
        folder=folder,
        description=str(meta.get("description") or "(no description)"),
        base_image=str(meta.get("base_image") or ""),
        builtin=builtin,
    )


def list_templates(dirs: Iterable[Path]) -> dict[str, Template]:
    """Every template by name; a lab's template hides a built-in of the same name."""
    found: dict[str, Template] = {}
    for root in dirs:
        if not root.is_dir():
            continue
        for folder in sorted(root.iterdir()):
            if folder.name in found or not folder.is_dir():
                continue
            template = _read_template(folder, builtin=root == BUILTIN_TEMPLATES)
            if template is not None:
                found[template.name] = template
    return found


def default_template(templates: Mapping[str, Template]) -> str:
    """The lab's first template if it has any (its own come first), else the built-in default."""
    lab = [name for name, t in templates.items() if not t.builtin]
    if lab:
        return lab[0]
    return DEFAULT_TEMPLATE if DEFAULT_TEMPLATE in templates else min(templates)


def devcontainer_config(name: str, gpus: str | None) -> dict:
    """The devcontainer.json for project ``name``: built from ../Dockerfile, runs as the user."""
    run_args = ["--label", f"{PROJECT_LABEL}={name}"]
    config: dict = {
        "name": name,
        "build": {"dockerfile": "../Dockerfile", "context": ".."},
        "runArgs": run_args,
    }
    if gpus:
        # DS01 gives the GPU through --gpus; "optional" keeps VS Code from refusing to open
        # the folder on a laptop without one.
        run_args[:0] = ["--gpus", gpus]
        config["hostRequirements"] = {"gpu": "optional"}
    config.update(
        {
            "workspaceMount": (
                "source=${localWorkspaceFolder},target=/workspaces/"
                "${localWorkspaceFolderBasename},type=bind"
            ),
            "workspaceFolder": "/workspaces/${localWorkspaceFolderBasename}",
            # DS01 already runs the container as your uid:gid; the Dev Containers UID update
            # would build another image as root for nothing.
            "updateRemoteUserUID": False,
        }
    )
    return config


def readme_text(name: str, template: Template, gpus: str | None) -> str:
    gpu_line = (
        f"It asks for {gpus} GPU{'s' if gpus != '1' else ''} (`--gpus {gpus}`): DS01 gives you a "
        "device your limits allow, often a MIG slice of a GPU (`ds01 concepts mig`)."
        if gpus
        else 'It asks for no GPU (add `"--gpus", "1"` to runArgs in devcontainer.json to get one).'
    )
    return f"""\
# {name}

Made by `ds01 project init` from the `{template.name}` template: {template.description}.
{gpu_line}

## Start it

- With DS01: `ds01 project launch` builds the image and starts the container
  (`ds01 project launch --print` shows the docker commands instead of running them).
- With plain docker: the same commands, see `ds01 project launch --print`.
- With VS Code: connect to this server with Remote-SSH, open this folder, and choose
  "Dev Containers: Reopen in Container". Or from a shell: `devcontainer up --workspace-folder .`

## What to know

- The container runs as you (your uid and groups), never as root: install packages in the
  `Dockerfile` (or `requirements.txt`) and rebuild; `sudo` and `apt-get` do not work inside.
- This folder is mounted at `/workspaces/{name}`; files you write there are yours.
- An idle container is stopped after a while (`ds01 limits`, `ds01 concepts idle`);
  `ds01 keepalive {name}` keeps a long job alive for 24 h.
- `ds01 ps` lists your containers with this project's name.
"""


def _render(text: str, values: Mapping[str, str]) -> str:
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    return text


def init_project(
    name: str,
    folder: Path,
    template: Template,
    *,
    base_image: str | None = None,
    gpus: str | None = "1",
    force: bool = False,
) -> list[Path]:
    """Write the project ``name`` into ``folder``; the files written, in order."""
    if not NAME_RE.match(name):
        raise ProjectError(
            f"{name!r} is not a project name (lowercase letters, digits, '-', '_', '.'; "
            "at most 63). To fix: use a name like my-thesis"
        )
    if folder.exists() and any(folder.iterdir()) and not force:
        raise ProjectError(
            f"{folder} exists and is not empty. To fix: pick another name or pass --force"
        )
    image = base_image or template.base_image
    if not image:
        raise ProjectError(
            f"template {template.name} names no base image. To fix: pass --base-image IMAGE"
        )
    values = {"project": name, "base_image": image}
    files: dict[Path, str] = {}
    for src in sorted(template.folder.rglob("*")):
        rel = src.relative_to(template.folder)
        if src.is_dir() or str(rel) in TEMPLATE_META:
            continue
        try:
            files[rel] = _render(src.read_text(encoding="utf-8"), values)
        except UnicodeDecodeError:
            files[rel] = src.read_bytes().decode("latin-1")  # binary: copied as it is
    dc = Path(".devcontainer/devcontainer.json")
    files.setdefault(dc, json.dumps(devcontainer_config(name, gpus), indent=2) + "\n")
    files.setdefault(Path("README.md"), readme_text(name, template, gpus))
    written = []
    for rel, text in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


# ---- launch ------------------------------------------------------------------------------


def read_devcontainer(folder: Path) -> dict:
    path = folder / ".devcontainer" / "devcontainer.json"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        raise ProjectError(
            f"{path} is missing: {folder} is not a project. To fix: run ds01 project init NAME, "
            "or pass the project's folder"
        ) from None
    # devcontainer.json may have // comments (JSONC); ours has none, a hand-edited one may.
    stripped = re.sub(r"^\s*//.*$", "", text, flags=re.M)
    try:
        return json.loads(stripped)
    except ValueError as exc:
        raise ProjectError(f"{path} is not valid JSON ({exc}). To fix: correct it") from None


def launch_commands(folder: Path, user: str) -> list[list[str]]:
    """The docker commands that build and start the project in ``folder`` as its devcontainer.json
    describes: ``docker build`` then ``docker run -d``."""
    config = read_devcontainer(folder)
    name = str(config.get("name") or folder.name).lower()
    build = config.get("build") or {}
    image = f"{user}/{name}:latest"
    if build:
        base = folder / ".devcontainer"
        context = os.path.normpath(base / build.get("context", "."))
        dockerfile = os.path.normpath(base / build.get("dockerfile", "Dockerfile"))
        commands = [["docker", "build", "-t", image, "-f", dockerfile, context]]
    elif config.get("image"):
        image, commands = str(config["image"]), []
    else:
        raise ProjectError(
            f"{folder}/.devcontainer/devcontainer.json has neither build nor image. "
            'To fix: add "image": "..." or recreate it with ds01 project init --force'
        )
    run_args = [str(a) for a in config.get("runArgs") or []]
    if not any(a.startswith(PROJECT_LABEL + "=") for a in run_args):
        run_args += ["--label", f"{PROJECT_LABEL}={name}"]
    mount = f"/workspaces/{folder.name}"
    commands.append(
        [
            "docker",
            "run",
            "-d",
            "--name",
            name,
            *run_args,
            "-v",
            f"{folder}:{mount}",
            "-w",
            mount,
            image,
        ]
    )
    return commands


def devcontainer_commands(folder: Path) -> list[list[str]]:
    return [["devcontainer", "up", "--workspace-folder", str(folder)]]


def show(commands: Iterable[list[str]]) -> str:
    return "\n".join(shlex.join(c) for c in commands)


def launch(
    commands: list[list[str]], run: Callable[[list[str]], int], echo: Callable[[str], None]
) -> int:
    """Run each command (printed first); stop at the first that fails, with its exit code."""
    for cmd in commands:
        echo(f"$ {shlex.join(cmd)}")
        code = run(cmd)
        if code != 0:
            return code
    return 0


def project_of(labels: Mapping[str, str] | None) -> str:
    """The project a container belongs to, from its labels; '' when none."""
    labels = labels or {}
    if labels.get(PROJECT_LABEL):
        return labels[PROJECT_LABEL]
    folder = labels.get(DEVCONTAINER_FOLDER_LABEL)
    return os.path.basename(folder.rstrip("/")) if folder else ""
