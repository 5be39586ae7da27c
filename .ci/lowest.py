"""Print the requirements pyproject.toml gives the named distributions, one a line, no extras.

    python3 .ci/lowest.py numpy pandas ... > low.txt
    uv pip install --resolution lowest-direct -r low.txt   # each at the lowest version admitted

The lines come from ``[project] dependencies`` or any group of
``[project.optional-dependencies]``, as written there (``pyarrow>=17``, ``ray>=2.60,<2.61``),
so pyproject.toml stays the one place the floors are written. .ci/run installs them at their
lowest in a second virtualenv and runs the report and statistics tests there, so a floor that
the code has outgrown fails CI. A name that pyproject.toml does not list, or lists without a
lower bound (``>=`` or ``==``), is an error (exit 2): it would not be tested at its lowest.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
# name, [extras] (dropped), version clauses, ; environment marker
REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*([^;]*)(;.*)?$")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(pyproject: Path = PYPROJECT) -> dict[str, str]:
    """{canonical name: the requirement without its extras} of every listed distribution."""
    project = tomllib.loads(pyproject.read_text())["project"]
    listed = list(project.get("dependencies", []))
    for group in project.get("optional-dependencies", {}).values():
        listed += group
    found: dict[str, str] = {}
    for requirement in listed:
        match = REQUIREMENT.match(requirement)
        if match:
            name, clauses, marker = match.group(1), match.group(2).strip(), match.group(3) or ""
            found[canonical(name)] = f"{name}{clauses}{marker}"
    return found


def has_floor(requirement: str) -> bool:
    clauses = REQUIREMENT.match(requirement).group(2).split(",")
    return any(c.strip().startswith((">=", "==", "~=")) for c in clauses)


def main(names: list[str]) -> int:
    known = requirements()
    lines = []
    for name in names:
        requirement = known.get(canonical(name))
        if requirement is None or not has_floor(requirement):
            print(f"lowest.py: {name!r} has no >= or == floor in {PYPROJECT}", file=sys.stderr)
            return 2
        lines.append(requirement)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
