"""The newcomer's commands (setup, project, concepts, help, guide, completion, man) and the
command line's manners (bare ``ds01``, ``--version``, ``--guided``), registered on cli.py's
parser. cli.py passes its ``api`` call and value formatter; nothing here imports it."""

from __future__ import annotations

import argparse
import os
import pwd
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import concepts, guided, help_texts, manners, projects, prompts, setup_wizard

Api = Callable[[str, str], Any]


class _Deps:
    api: Api
    show: Callable[[str, Any], str]
    failure: type[Exception]
    root: argparse.ArgumentParser | None = None


def _me() -> tuple[str, str]:
    entry = pwd.getpwuid(os.getuid())
    return entry.pw_name, os.environ.get("HOME") or entry.pw_dir


def _run(cmd: list[str]) -> int:
    return subprocess.run(cmd).returncode


def _echo(line: str) -> None:
    print(line, flush=True)


def _prompter(args: argparse.Namespace, deps: _Deps) -> prompts.Prompter:
    ask = prompts.prompter(getattr(args, "yes", False))
    if ask is None:
        raise deps.failure(
            "this needs a terminal to ask on. To fix: pass --yes to take the defaults"
        )
    return ask


def add_commands(
    sub: argparse._SubParsersAction,
    api: Api,
    show: Callable[[str, Any], str],
    failure: type[Exception],
) -> None:
    """Register the newcomer's commands on ``ds01``'s subparsers."""
    deps = _Deps()
    deps.api, deps.show, deps.failure = api, show, failure

    setup = sub.add_parser("setup", help=_summary("setup"))
    setup.add_argument("--yes", "-y", action="store_true", help="take the defaults; ask nothing")
    setup.add_argument("--project", help="the first project's name (default my-first-project)")
    setup.add_argument("--template", help="its template (see ds01 project templates)")
    setup.add_argument("--dir", help="its folder (default ~/NAME)")
    setup.add_argument("--base-image", help="replace the template's base image")
    setup.add_argument("--templates", help="a folder of templates to use first")
    launch = setup.add_mutually_exclusive_group()
    launch.add_argument("--launch", dest="launch", action="store_true", default=None,
                        help="build and start the project")  # fmt: skip
    launch.add_argument("--no-launch", dest="launch", action="store_false", help="only write it")
    setup.add_argument("--no-project", action="store_true", help="make no project")
    setup.set_defaults(func=lambda a: _setup(a, deps))

    proj = sub.add_parser("project", help=_summary("project")).add_subparsers(
        dest="project_cmd", required=True
    )
    init = proj.add_parser("init", help=_summary("project init"))
    init.add_argument("name", help="lowercase letters, digits, - _ . (becomes the folder name)")
    init.add_argument("--template", "-t", help="what the Dockerfile starts from (default: the "
                      f"lab's first template, else {projects.DEFAULT_TEMPLATE})")  # fmt: skip
    init.add_argument("--dir", help="where to create it (default ~/NAME)")
    init.add_argument("--base-image", help="replace the template's base image")
    init.add_argument("--gpus", default="1", help="the --gpus the container asks for (default 1)")
    init.add_argument("--no-gpu", dest="gpus", action="store_const", const=None, help="no GPU")
    init.add_argument("--templates", help="a folder of templates to use first")
    init.add_argument("--force", action="store_true", help="write into a folder that is not empty")
    init.set_defaults(func=lambda a: _project_init(a, deps))
    lau = proj.add_parser("launch", help=_summary("project launch"))
    lau.add_argument("folder", nargs="?", default=".", help="the project (default: here)")
    lau.add_argument("--print", action="store_true", help="print the commands, run nothing")
    lau.add_argument("--devcontainer", action="store_true", help="use the Dev Containers CLI")
    lau.set_defaults(func=lambda a: _project_launch(a, deps))
    tpl = proj.add_parser("templates", help=_summary("project templates"))
    tpl.add_argument("--templates", help="a folder of templates to use first")
    tpl.set_defaults(func=_project_templates)

    con = sub.add_parser("concepts", help=_summary("concepts"))
    con.add_argument("topic", nargs="?", help="a topic, a policy key, or all")
    con.set_defaults(func=_concepts)
    hlp = sub.add_parser("help", help=_summary("help"))
    hlp.add_argument("words", nargs="*", metavar="COMMAND", help="e.g. keepalive, project init")
    hlp.set_defaults(func=lambda a: _help(a, deps))
    guide = sub.add_parser("guide", help=_summary("guide"))
    guide.add_argument(
        "task", nargs="?", choices=list(guided.TASKS), help="the task (default: ask)"
    )
    guide.add_argument("--yes", "-y", action="store_true", help="take the defaults; ask nothing")
    guide.add_argument("--templates", help="a folder of templates to use first")
    guide.set_defaults(func=lambda a: _guide(a, deps))
    comp = sub.add_parser("completion", help=_summary("completion"))
    comp.add_argument("shell", choices=["bash", "zsh"])
    comp.set_defaults(func=lambda a: _print(manners.completion(_root(deps), a.shell)))
    man = sub.add_parser("man", help=_summary("man"))
    man.set_defaults(func=lambda a: _print(manners.man_page(_root(deps))))
    sub._ds01_deps = deps  # type: ignore[attr-defined]  # finish() finds the root parser here


def container_projects(socket_path: str) -> dict[str, str]:
    """Container ID -> project name, from the labels the gateway shows this user; empty when
    the listing fails (a project name is a courtesy, never a reason to fail a command)."""
    from ds01d import unix_http

    try:
        rows = unix_http.request(socket_path, "GET", "/containers/json?all=1", timeout=10).json()
    except (OSError, ValueError):
        return {}
    if not isinstance(rows, list):
        return {}
    return {r.get("Id", ""): projects.project_of(r.get("Labels")) for r in rows}


def finish(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Write help texts into the whole parser, add ``--version``; call after every command is in."""
    parser.add_argument("--version", action="version", version=f"ds01 {manners.version()}")
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "First time? ds01 setup. Every command: ds01 CMD --help, ds01 CMD --info. "
        "Ideas: ds01 concepts. Step by step: ds01 guide."
    )
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            action.metavar = "COMMAND"  # not the list of twenty names in every usage line
        deps = getattr(action, "_ds01_deps", None)
        if deps is not None:
            deps.root = parser
    return help_texts.decorate(parser)


def before_parse(argv: list[str]) -> tuple[int, str] | None:
    """Bare ``ds01``: the overview (exit 0). None for everything argparse should handle."""
    if not argv:
        return 0, manners.OVERVIEW
    return None


def rewrite(argv: list[str]) -> list[str]:
    """``ds01 --guided [TASK]`` is ``ds01 guide [TASK]``."""
    if argv[:1] == ["--guided"]:
        return ["guide", *argv[1:]]
    return argv


def _summary(key: str) -> str:
    return help_texts.HELP[key].summary


def _root(deps: _Deps) -> argparse.ArgumentParser:
    assert deps.root is not None, "first_day.finish(parser) was not called"
    return deps.root


def _print(text: str) -> int:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


def _setup(args: argparse.Namespace, deps: _Deps) -> int:
    user, home = _me()
    opts = setup_wizard.SetupOptions(
        project=args.project,
        template=args.template,
        directory=args.dir,
        launch=args.launch,
        make_project=not args.no_project,
        templates_dir=args.templates,
        base_image=args.base_image,
    )
    try:
        return setup_wizard.run_setup(
            opts, _prompter(args, deps), deps.api, _run, _echo, deps.show, user, home
        )
    except projects.ProjectError as exc:
        raise deps.failure(str(exc)) from None
    except prompts.Cancelled:
        return 130


def _project_init(args: argparse.Namespace, deps: _Deps) -> int:
    _, home = _me()
    templates = projects.list_templates(projects.template_dirs(args.templates))
    chosen = args.template or projects.default_template(templates)
    template = templates.get(chosen)
    if template is None:
        raise deps.failure(
            f"no template {chosen!r}. To fix: pick one of {', '.join(templates)} "
            "(ds01 project templates)"
        )
    folder = Path(args.dir or os.path.join(home, args.name)).expanduser().absolute()
    try:
        written = projects.init_project(
            args.name,
            folder,
            template,
            base_image=args.base_image,
            gpus=args.gpus,
            force=args.force,
        )
    except projects.ProjectError as exc:
        raise deps.failure(str(exc)) from None
    for path in written:
        print(f"wrote {path}")
    print(f"next: ds01 project launch {folder}   (or open it in VS Code: Reopen in Container)")
    return 0


def _project_launch(args: argparse.Namespace, deps: _Deps) -> int:
    user, _ = _me()
    folder = Path(args.folder).expanduser().absolute()
    try:
        commands = (
            projects.devcontainer_commands(folder)
            if args.devcontainer
            else projects.launch_commands(folder, user)
        )
    except projects.ProjectError as exc:
        raise deps.failure(str(exc)) from None
    if args.print:
        return _print(projects.show(commands))
    code = projects.launch(commands, _run, _echo)
    if code != 0:
        raise deps.failure(f"{commands[-1][0]} failed (exit {code}); its message is above")
    return 0


def _project_templates(args: argparse.Namespace) -> int:
    templates = projects.list_templates(projects.template_dirs(args.templates))
    width = max((len(n) for n in templates), default=0)
    for t in templates.values():
        where = "built-in" if t.builtin else str(t.folder.parent)
        print(f"{t.name.ljust(width)}  {t.description} [{where}; FROM {t.base_image or '?'}]")
    return 0


def _concepts(args: argparse.Namespace) -> int:
    code, text = concepts.concepts(args.topic)
    print(text, file=sys.stdout if code == 0 else sys.stderr)
    return code


def _help(args: argparse.Namespace, deps: _Deps) -> int:
    root = _root(deps)
    if not args.words:
        return _print(manners.OVERVIEW)
    found = help_texts.find_parser(root, args.words)
    if found is None:
        print(
            f"ds01: no command {' '.join(args.words)!r}. To fix: see ds01 --help", file=sys.stderr
        )
        return 2
    return _print(help_texts.info(*found))


def _guide(args: argparse.Namespace, deps: _Deps) -> int:
    user, home = _me()
    tools = guided.Tools(deps.api, _run, _echo, user, home, args.templates)
    try:
        return guided.run_guide(args.task, _prompter(args, deps), tools)
    except projects.ProjectError as exc:
        raise deps.failure(str(exc)) from None
    except prompts.Cancelled:
        return 130
