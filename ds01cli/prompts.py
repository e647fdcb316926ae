"""Questions for ``ds01 setup`` and ``--guided``: questionary on a terminal, the defaults with
``--yes``. The wizards ask through a Prompter, so they run the same in both ways."""

from __future__ import annotations

import sys
from collections.abc import Sequence


class Cancelled(Exception):
    """The user left a question (Ctrl-C); nothing more is done."""


class Prompter:
    """Answers every question with its default (``--yes``, or no terminal)."""

    interactive = False

    def text(self, question: str, default: str) -> str:
        print(f"{question} {default}")
        return default

    def select(self, question: str, choices: Sequence[tuple[str, str]], default: str) -> str:
        """``choices`` are (value, shown text); the value chosen."""
        shown = dict(choices).get(default, default)
        print(f"{question} {shown}")
        return default

    def confirm(self, question: str, default: bool) -> bool:
        print(f"{question} {'yes' if default else 'no'}")
        return default


class TerminalPrompter(Prompter):
    """Asks on the terminal with questionary (arrow keys, defaults filled in)."""

    interactive = True

    @staticmethod
    def _ask(question) -> object:
        answer = question.ask()
        if answer is None:  # questionary's answer to Ctrl-C
            raise Cancelled()
        return answer

    def text(self, question: str, default: str) -> str:
        import questionary

        return str(self._ask(questionary.text(question, default=default)))

    def select(self, question: str, choices: Sequence[tuple[str, str]], default: str) -> str:
        import questionary

        options = [questionary.Choice(title=shown, value=value) for value, shown in choices]
        return str(self._ask(questionary.select(question, choices=options, default=default)))

    def confirm(self, question: str, default: bool) -> bool:
        import questionary

        return bool(self._ask(questionary.confirm(question, default=default)))


def prompter(yes: bool) -> Prompter | None:
    """The prompter for this run; None when there is no terminal to ask on and no ``--yes``."""
    if yes:
        return Prompter()
    if sys.stdin.isatty() and sys.stdout.isatty():
        return TerminalPrompter()
    return None
