"""docs/cli.md is the CLI's own --help output; this keeps the two from drifting apart.

Regenerate after changing a command: python -m tests.test_docs
"""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from vmkit.cli.main import cli

DOC = Path(__file__).resolve().parent.parent / "docs" / "cli.md"
HEADER = """# Command reference

Generated from `python -m vmkit COMMAND --help` (regenerate: `python -m tests.test_docs`).
Every command: errors print one line `error: what failed (what to do)` and exit 1; usage
errors exit 2; `--debug` before the command shows tracebacks. `--vm NAME` may be left out
when exactly one VM runs.
"""


def help_text(command: str) -> str:
    result = CliRunner().invoke(
        cli, [*command.split(), "--help"], prog_name="vmkit", terminal_width=100
    )
    assert result.exit_code == 0, result.output
    return result.output.strip()


def all_commands() -> list[str]:
    names = []
    for name, cmd in sorted(cli.commands.items()):
        sub = getattr(cmd, "commands", None)
        if sub:
            names += [f"{name} {s}" for s in sorted(sub)]
        else:
            names.append(name)
    return names


def render() -> str:
    parts = [HEADER]
    for c in all_commands():
        parts.append(f"## vmkit {c}\n\n```\n{help_text(c)}\n```\n")
    return "\n".join(parts)


def test_cli_doc_matches_the_help() -> None:
    assert DOC.read_text(encoding="utf-8") == render(), "run: python -m tests.test_docs"


def test_readme_mentions_every_top_level_command() -> None:
    readme = (DOC.parent.parent / "README.md").read_text(encoding="utf-8")
    mentioned = {
        n
        for group in re.findall(r"(?m)(?:^    |\$\()vmkit ([a-z|]+)", readme)
        for n in group.split("|")
    }
    missing = {n for n in cli.commands if n not in mentioned} - {"box", "lab", "context", "image"}
    assert not missing, f"README does not show: {sorted(missing)}"


if __name__ == "__main__":
    DOC.write_text(render(), encoding="utf-8")
