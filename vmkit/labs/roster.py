"""A class roster from CSV: one student per line, each turned into a Vagrant machine name.

The CSV has a header row with a ``name`` column (``student`` is accepted too). An optional
``machine`` column sets the machine name; without it the name is made from the student's
name (``"Zoë O'Brien"`` → ``zoe-obrien``). ``email`` is kept for the manifest. Every problem
in the file is reported in one ``RosterInvalid`` that names the CSV line numbers.
"""

from __future__ import annotations

import csv
import re
import unicodedata
from pathlib import Path

import attrs

from vmkit.errors import InvalidInput
from vmkit.providers.vagrant.vagrantfile import MACHINE_NAME

NAME_COLUMNS = ("name", "student")


class RosterInvalid(InvalidInput):
    """The roster has empty names, duplicates or machine names Vagrant would refuse."""

    def __init__(self, path: Path, problems: list[tuple[int, str]]) -> None:
        lines = sorted({n for n, _ in problems})
        text = "; ".join(f"line {n}: {msg}" for n, msg in problems)
        super().__init__(
            f"roster {path} has problems on line(s) {', '.join(map(str, lines))}: {text}",
            hint="fix those lines; machine names are lowercase letters, digits and '-' "
            "(add a `machine` column to choose them yourself)",
        )
        self.path = path
        self.lines = lines
        self.problems = problems


@attrs.frozen
class Student:
    """One student of the roster."""

    line: int  # the CSV line, counting the header as line 1
    name: str
    machine: str
    email: str = ""


def machine_name_for(name: str, limit: int = 40) -> str:
    """A Vagrant machine name made from a person's name ("" if nothing usable is left)."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    # Apostrophes join (O'Brien → obrien); everything else that is not a letter or digit splits.
    joined = re.sub(r"['’`]", "", ascii_name.lower())
    slug = re.sub(r"[^a-z0-9]+", "-", joined).strip("-")
    return slug[:limit].rstrip("-")


def read(path: Path) -> list[Student]:
    """The students of the roster at ``path``; ``RosterInvalid`` listing every bad line."""
    return parse(read_text(path), path)


def read_text(path: Path) -> str:
    """The roster file's text (a spreadsheet's UTF-8 BOM dropped), unchecked."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError as e:
        raise InvalidInput(f"roster {path} does not exist") from e
    except UnicodeDecodeError as e:
        raise InvalidInput(
            f"roster {path} is not UTF-8 text", hint="save the CSV as UTF-8 in your spreadsheet"
        ) from e


def parse(text: str, path: Path) -> list[Student]:
    """Students from CSV ``text``; ``path`` is only for messages."""
    rows = list(csv.reader(text.splitlines()))
    header_at = next((i for i, row in enumerate(rows) if any(c.strip() for c in row)), None)
    if header_at is None:
        raise InvalidInput(f"roster {path} is empty", hint="give a CSV with a `name` column")
    header = [c.strip().lower() for c in rows[header_at]]
    name_col = next((header.index(c) for c in NAME_COLUMNS if c in header), None)
    if name_col is None:
        raise InvalidInput(
            f"roster {path} line {header_at + 1} has no `name` column (columns: {', '.join(header)})",
            hint="the first line of the CSV names the columns; one must be `name`",
        )
    machine_col = header.index("machine") if "machine" in header else None
    email_col = header.index("email") if "email" in header else None

    def cell(row: list[str], col: int | None) -> str:
        return row[col].strip() if col is not None and col < len(row) else ""

    problems: list[tuple[int, str]] = []
    students: list[Student] = []
    used: dict[str, int] = {}
    for i, row in enumerate(rows[header_at + 1 :], start=header_at + 2):
        if not any(c.strip() for c in row):
            continue
        name = cell(row, name_col)
        if not name:
            problems.append((i, "the name is empty"))
            continue
        given = cell(row, machine_col)
        if given:
            machine = given
            if not MACHINE_NAME.match(machine):
                problems.append(
                    (i, f"machine name {machine!r} has characters Vagrant or host names reject")
                )
                continue
        else:
            machine = machine_name_for(name)
            if not machine:
                problems.append(
                    (
                        i,
                        f"no machine name can be made from {name!r}; give one in a `machine` column",
                    )
                )
                continue
        if machine in used:
            problems.append(
                (i, f"machine name {machine!r} ({name}) is already used on line {used[machine]}")
            )
            continue
        used[machine] = i
        students.append(Student(line=i, name=name, machine=machine, email=cell(row, email_col)))
    if problems:
        raise RosterInvalid(path, problems)
    if not students:
        raise InvalidInput(f"roster {path} lists no students")
    return students
