"""The README stays true to the checkout: its Tests table names every test file, and only files that exist."""

import re

from tests.servers import ROOT


def listed_files() -> set[str]:
    section = (ROOT / "README.md").read_text().split("\n## Tests\n", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `(tests/[^`]+\.py)` \|", section, flags=re.MULTILINE))


def test_the_tests_table_lists_every_test_file():
    """A test file added without a row in the README's Tests table fails here."""
    files = {f"tests/{path.name}" for path in (ROOT / "tests").glob("test_*.py")}
    missing = sorted(files - listed_files())
    assert not missing, f"add these to the README's Tests table: {missing}"


def test_the_tests_table_names_only_files_that_exist():
    stale = sorted(name for name in listed_files() if not (ROOT / name).exists())
    assert not stale, f"the README's Tests table names files that are gone: {stale}"
