"""constraints.txt pins what the suite was tested with: every dependency the dev install pulls in from
pyproject.toml has an exact pin there, and the pin satisfies pyproject's own range, so the README's install line
and CI install one tested set instead of whatever the registry serves that day."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

pytestmark = pytest.mark.edge

REPO = Path(__file__).resolve().parents[1]
# Installed only on a machine with a CUDA device, never by the dev install the suite runs under.
UNTESTED_EXTRAS = {"gpu"}


def _pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin (name==version)"
            pins[canonicalize_name(name)] = version
    return pins


def _tested_requirements() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    requirements = [Requirement(r) for r in project["dependencies"]]
    for extra, items in project["optional-dependencies"].items():
        if extra not in UNTESTED_EXTRAS:
            requirements += [Requirement(r) for r in items]
    return [r for r in requirements if canonicalize_name(r.name) != canonicalize_name(project["name"])]


def test_every_dependency_is_pinned_within_its_range():
    pins = _pins()
    requirements = _tested_requirements()
    assert len(requirements) > 20
    for requirement in requirements:
        name = canonicalize_name(requirement.name)
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue  # not installed on this platform (e.g. uvloop on Windows)
        assert name in pins, f"constraints.txt has no pin for {requirement.name} (pyproject.toml: {requirement})"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {requirement.name}=={pins[name]}, outside pyproject.toml's {requirement}")


def test_the_readme_and_ci_install_with_the_constraints():
    readme_install = (REPO / "README.md").read_text(encoding="utf-8").split("```bash\n", 1)[1].splitlines()[0]
    assert '-c constraints.txt' in readme_install and 'pip install -e ".[dev]"' in readme_install
    assert '-c constraints.txt' in (REPO / ".ci" / "run").read_text(encoding="utf-8")
