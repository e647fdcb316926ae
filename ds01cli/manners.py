"""What a command line is expected to do besides its commands: ``--version``, a short overview
for bare ``ds01``, shell completion (shtab) and a man page (argparse-manpage), both
generated from the parser so they never drift from it."""

from __future__ import annotations

import argparse
import importlib.metadata

OVERVIEW = """\
DS01 shares this server's GPUs fairly. Plain docker, Compose and VS Code Dev Containers work
as usual; ds01 tells you what you may use, why something was refused, and helps you start.

First time here?     ds01 setup
Your limits:         ds01 limits          Your containers:  ds01 ps
GPUs and the queue:  ds01 gpus            Why refused:      ds01 why CONTAINER
New project:         ds01 project init NAME, then ds01 project launch
Step by step:        ds01 guide           Ideas explained:  ds01 concepts

Every command: ds01 CMD --help (usage, examples), ds01 CMD --info (the reference).
All commands: ds01 --help"""


def version() -> str:
    try:
        return importlib.metadata.version("ds01")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def completion(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script for ``shell`` (bash or zsh)."""
    import shtab

    return shtab.complete(parser, shell=shell)


def man_page(parser: argparse.ArgumentParser) -> str:
    """The ds01(1) man page in roff."""
    from argparse_manpage.manpage import Manpage

    data = {
        "project_name": "ds01",
        "version": version(),
        "description": "GPU governance for shared Docker servers",
        "manual_section": 1,
        "manual_title": "DS01 Manual",
        "url": "",
    }
    return str(Manpage(parser, _data=data, format="single-commands-section"))
