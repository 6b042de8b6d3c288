"""Which pool a Python step joins, under real make and cargo (issue 11, items 12 and 13).

* ``cargo build`` → build script → ``make -j2`` → ``+python step``: ``MAKEFLAGS`` names
  the ``-j2`` pool of the make right above the step, ``CARGO_MAKEFLAGS`` still names
  cargo's (``-j8``) pool. The step must run on make's: its peak, measured from the spans
  its jobs log, is 2. Joined on cargo's pool it reached 5.
* make 4.3 without ``+`` leaves ``--jobserver-auth=3,4`` in ``MAKEFLAGS`` and closes fds
  3 and 4: a program's first ``os.pipe()`` gets them and must not be joined as the pool.

The unit tests of the rule are in tests/test_pool_edges.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import cargo_ws
from peers import Peer, clean_environ, run_captured
from processes import describe
from spans import peak_overlap, read_spans

HERE = Path(__file__).resolve().parent
STEP = HERE / "recipes" / "pool_choice.py"
PY = sys.executable
RUN_TIMEOUT = 90
JOBS = 5
JOB_SECONDS = 0.3

# The build script runs make as a build script would, without copying CARGO_MAKEFLAGS
# into MAKEFLAGS: `make -j2` makes a pool of its own, and CARGO_MAKEFLAGS passes through
# it unchanged (cargo's pipe fds stay open: make closes only its own).
BUILD_RS = """\
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=MJ_RUN");
    println!("cargo:rerun-if-changed=build.rs");
    let make = std::env::var("MJ_MAKE").expect("MJ_MAKE");
    let makefile = std::env::var("MJ_MAKEFILE").expect("MJ_MAKEFILE");
    let out = Command::new(&make)
        .args(["-s", "-j2", "-f", &makefile])
        .output()
        .expect("run make");
    eprint!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "make failed: {:?}", out.status);
}
"""

STEP_MAKEFILE = """\
all:
\t+$(MJ_PY) $(MJ_STEP) jobs --log $(MJ_LOG) --jobs $(MJ_JOBS) --seconds $(MJ_SECONDS) \
--report $(MJ_REPORT)
"""


@pytest.fixture(scope="module")
def build_script_crate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A one-crate workspace whose build script runs ``make -j2``: (manifest, target dir)."""
    root = tmp_path_factory.mktemp("which-pool")
    crate = root / "ws"
    (crate / "src").mkdir(parents=True)
    (crate / "Cargo.toml").write_text(
        '[package]\nname = "mkstep"\nversion = "0.1.0"\nedition = "2021"\nbuild = "build.rs"\n'
        "\n[workspace]\n"
    )
    (crate / "src" / "lib.rs").write_text("pub fn f() {}\n")
    (crate / "build.rs").write_text(BUILD_RS)
    return crate / "Cargo.toml", root / "target"


@pytest.mark.parametrize("make_key", ["make43", "make441"])
def test_step_under_cargo_then_make_joins_the_make_right_above_it(
    request: pytest.FixtureRequest,
    cargo: Peer,
    build_script_crate: tuple[Path, Path],
    tmp_path: Path,
    make_key: str,
) -> None:
    make: Peer = request.getfixturevalue(make_key)
    manifest, target = build_script_crate
    makefile = tmp_path / "Makefile"
    makefile.write_text(STEP_MAKEFILE)
    log, report = tmp_path / "spans.log", tmp_path / "report.json"
    env = clean_environ(
        **cargo_ws.run_env(target, log),
        MJ_MAKE=make.path,
        MJ_MAKEFILE=str(makefile),
        MJ_PY=PY,
        MJ_STEP=str(STEP),
        MJ_JOBS=str(JOBS),
        MJ_SECONDS=str(JOB_SECONDS),
        MJ_REPORT=str(report),
    )
    proc = run_captured(
        cargo_ws.build_argv(cargo.path, manifest, jobs=8), tmp_path, RUN_TIMEOUT, env=env
    )
    assert proc.returncode == 0, describe(proc)
    found = json.loads(report.read_text())
    advertised = found["advertised"]
    # Both pools reached the step, and they are different ones.
    assert "--jobserver-auth=" in (advertised["MAKEFLAGS"] or ""), found
    assert "--jobserver-auth=" in (advertised["CARGO_MAKEFLAGS"] or ""), found
    assert found["variable"] == "MAKEFLAGS" and found["chosen"] == "MAKEFLAGS", found
    assert found["slots"] == 2 and found["warnings"] == [], found
    spans = read_spans(log)
    assert sorted(s.name for s in spans) == [f"step.j{i}" for i in range(JOBS)]
    # make's two slots, used at once: neither cargo's eight nor one at a time.
    assert peak_overlap(spans) == 2, [(s.name, s.start, s.end) for s in spans]


def test_own_first_pipe_under_make43_without_plus_is_not_a_pool(
    make43: Peer, tmp_path: Path
) -> None:
    report = tmp_path / "report.json"
    (tmp_path / "Makefile").write_text(f"all:\n\t{PY} {STEP} own-pipe --report {report}\n")
    proc = run_captured([make43.path, "-s", "-j2"], tmp_path, RUN_TIMEOUT, env=clean_environ())
    assert proc.returncode == 0, describe(proc)
    found = json.loads(report.read_text())
    assert "--jobserver-auth=3,4" in found["MAKEFLAGS"], found  # what make 4.3 leaves
    assert found["fds"] == [3, 4], found  # make closed them; the program's pipe got them
    assert found["refused"] is not None and "close-on-exec" in found["refused"], found
    assert found["left"] == 5, found  # none of the program's bytes was taken as a token
