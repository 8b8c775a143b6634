"""Markers by folder (tests/conftest.py): `-m faults` selects the tests under tests/faults and
only those, `-m e2e` those under tests/e2e, and `-m "not integration"` (`make unit`) none of the
tests that need the services. Read from a collection of the whole suite in a pytest of its own."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: Collects tests/ (nothing runs) and writes each test's marker names as JSON to argv[1].
COLLECT = """
import json, sys
import pytest

class Markers:
    found = {}

    def pytest_collection_finish(self, session):
        self.found = {i.nodeid: sorted({m.name for m in i.iter_markers()}) for i in session.items}

markers = Markers()
code = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", "tests"], plugins=[markers])
with open(sys.argv[1], "w") as out:
    json.dump(markers.found, out)
sys.exit(code)
"""


@pytest.fixture(scope="module")
def markers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    """The marker names of every test of the suite, by node id (`tests/<folder>/…`)."""
    out = tmp_path_factory.mktemp("markers") / "markers.json"
    done = subprocess.run(
        [sys.executable, "-c", COLLECT, str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    found: dict[str, list[str]] = json.loads(out.read_text())
    return {nodeid: set(names) for nodeid, names in found.items()}


def folder(nodeid: str) -> str:
    return nodeid.split("/")[1]


@pytest.mark.parametrize(
    ("marker", "folders"),
    [
        ("faults", {"faults"}),
        ("e2e", {"e2e"}),
        ("integration", {"integration", "e2e", "faults"}),
    ],
)
def test_a_folder_marker_is_on_every_test_of_its_folders_and_on_no_other(
    markers: dict[str, set[str]], marker: str, folders: set[str]
) -> None:
    in_folders = {nodeid for nodeid in markers if folder(nodeid) in folders}
    assert {folder(nodeid) for nodeid in in_folders} == folders, "a folder without tests?"
    marked = {nodeid for nodeid, names in markers.items() if marker in names}
    assert sorted(in_folders - marked) == [], f"under {sorted(folders)} without `{marker}`"
    assert sorted(marked - in_folders) == [], f"`{marker}` outside {sorted(folders)}"
