"""The pytest plugin's cheap guarantees: how it is registered, that importing makejobs
does not load it, and that a serial run takes no token.

What needs xdist (slots lent to workers, -n auto sizing, -n 0, killed workers, ^C) runs
once, against real make, in integration/test_pytest_plugin_peers.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import distribution
from pathlib import Path

from makejobs.pool import TokenPool

# Inner runs load xdist and our plugin by their entry-point names, and nothing else: that
# is quicker, and the benchmark's peers (which register pytest plugins too) stay out.
INNER = ["-p", "no:cacheprovider", "-p", "xdist", "-p", "makejobs"]


def test_installing_makejobs_registers_the_plugin() -> None:
    plugins = [e for e in distribution("makejobs").entry_points if e.group == "pytest11"]
    assert [(e.name, e.value) for e in plugins] == [("makejobs", "makejobs.pytest_plugin")]


def test_importing_makejobs_imports_neither_pytest_nor_xdist() -> None:
    code = (
        "import json, sys\n"
        "import makejobs\n"
        "from makejobs import *\n"  # every lazily imported public name
        "import makejobs.pool, makejobs.jobserver, makejobs.executor\n"
        "watched = ('pytest', '_pytest', 'xdist', 'setuptools', 'makejobs.pytest_plugin',"
        " 'makejobs.setuptools', 'makejobs._lending')\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith(watched))))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(proc.stdout) == []


INNER_TEST = """
import os
from makejobs.pool import TokenPool

def test_the_pool_is_untouched(pytestconfig):
    assert pytestconfig.pluginmanager.has_plugin("makejobs")
    assert not pytestconfig.pluginmanager.has_plugin("makejobs-controller")
    pool = TokenPool.from_environ()  # this process's only handle: the plugin opened none
    try:
        assert pool.implicit_free and pool.available() == int(os.environ["SLOTS"]) - 1
    finally:
        pool.close()
"""


def test_a_serial_run_under_a_pool_takes_no_token(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_inner.py").write_text(INNER_TEST)
    with TokenPool.create(3, style="fifo") as pool:
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", *INNER],
            cwd=tmp_path,
            env={**pool.environ(), "SLOTS": "3", "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "1 passed" in proc.stdout
        assert pool.available() == 2
