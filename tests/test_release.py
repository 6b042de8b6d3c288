"""What a release carries: one version everywhere, its changelog entry, its license.

These run in a checkout, in an unpacked sdist and (by .ci/run) against the installed
wheel, with the sdist's files beside the tests.
"""

from __future__ import annotations

import re
from importlib import metadata

import makejobs
from processes import REPO


def project_table_value(key: str) -> str:
    """A string value of pyproject.toml's [project] table (tomllib is 3.11+)."""
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    table = text.split("\n[project]\n", 1)[1].split("\n[", 1)[0]
    found = re.search(rf'^{key} = "([^"]*)"$', table, re.M)
    assert found is not None, f"no {key} in [project]"
    return found.group(1)


def test_one_version_everywhere() -> None:
    declared = project_table_value("version")
    assert makejobs.__version__ == declared
    assert metadata.version("makejobs") == declared  # what pip installed


def test_the_changelog_starts_with_this_version() -> None:
    headings = re.findall(r"^## (\S+)", (REPO / "CHANGELOG.md").read_text(), re.M)
    assert headings and headings[0] == makejobs.__version__, headings[:2]


def test_the_license_is_declared_and_shipped() -> None:
    assert project_table_value("license") == "MIT"
    info = metadata.metadata("makejobs")
    assert info["License-Expression"] == "MIT"
    assert info["Author"] == "makejobs contributors"
    text = (REPO / "LICENSE").read_text()
    assert text.startswith("MIT License") and "makejobs contributors" in text
