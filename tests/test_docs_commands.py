"""Every `dcollapse ...` command shown in README.md and docs/*.md parses: shell quoting is balanced, every option
exists and every value has its type. Commands are parsed, never run (synopsis lines with [optional] parts or
CAPITALISED placeholders followed by '...' are skipped: they are not meant to be pasted)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer

from dcollapse.cli.app import app

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "CONTRIBUTING.md"]
SHELL_OPERATORS = {"|", "||", "&&", ";", ">", ">>", "2>", "<", "&"}


def code_lines(text: str) -> list[str]:
    """Lines of fenced code blocks and indented code, backslash continuations joined."""
    lines, joined = [], ""
    in_fence = False
    for raw in text.splitlines():
        if raw.strip().startswith("```"):
            in_fence = not in_fence
            continue
        if not (in_fence or raw.startswith("    ")):
            continue
        line = raw.strip()
        if line.endswith("\\"):
            joined += line[:-1] + " "
            continue
        lines.append(joined + line)
        joined = ""
    return lines


def doc_commands() -> list[tuple[str, str]]:
    """(where, command line) of every pasteable `dcollapse` command."""
    found = []
    for path in DOCS:
        if not path.is_file():
            continue
        for line in code_lines(path.read_text()):
            line = line.removeprefix("$ ")
            for part in re.split(r"\s(?:&&|\|\||;)\s", line):
                part = part.strip()
                if part.startswith("dcollapse ") and "[" not in part and "..." not in part:
                    found.append((path.name, part))
    return found


COMMANDS = doc_commands()


def pending(ctx: object) -> list[str]:
    """The words a group left for its subcommand (click renamed the attribute across releases)."""
    return [*getattr(ctx, "protected_args", getattr(ctx, "_protected_args", [])), *getattr(ctx, "args", [])]


def shell_words(line: str) -> list[str]:
    """The words of the command up to the first unquoted shell operator (a redirection, pipe, ...); expanded
    variables stand for a path when they hold a slash ($DATA/train.txt), else for options defined in the text
    around ($T), which are left out."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    words: list[str] = []
    for token in lexer:
        if token in SHELL_OPERATORS:
            if token.startswith(">") and words and words[-1] in ("1", "2"):
                words.pop()
            break
        words.append(token)
    return ["path" if w.startswith("$") else w for w in words if not w.startswith("$") or "/" in w]


def test_the_docs_show_commands():
    assert len(COMMANDS) > 30


@pytest.mark.parametrize(("where", "line"), COMMANDS, ids=[f"{w}:{line[:60]}" for w, line in COMMANDS])
def test_documented_command_parses(where, line):
    try:
        words = shell_words(line)
    except ValueError as exc:
        pytest.fail(f"{where}: {line!r} does not parse as a shell line ({exc})")
    command = typer.main.get_command(app)
    try:
        ctx = command.make_context("dcollapse", list(words[1:]))
        while hasattr(command, "resolve_command") and pending(ctx):
            name, command, rest = command.resolve_command(ctx, pending(ctx))
            assert command is not None, f"no command {name!r}"
            ctx = command.make_context(name, list(rest), parent=ctx)
    except Exception as exc:  # noqa: BLE001  click's usage errors; --help / --version end with a clean Exit(0)
        if type(exc).__name__ == "Exit" and getattr(exc, "exit_code", 1) == 0:
            return
        pytest.fail(f"{where}: {line!r}: {type(exc).__name__}: {getattr(exc, 'message', exc)}")
