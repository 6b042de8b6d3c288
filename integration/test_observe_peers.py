"""Seeing the pool with real make 4.3 and 4.4.1: doctor, status's holders, serve --trace.

* ``makejobs doctor`` in the situations that lose builds their jobserver, produced for
  real: a recipe without '+' (make 4.3: closed fds; make 4.4.1 in pipe mode: -2,-2),
  descriptors reused for other files, a Python parent that closed them, ``-jN`` forced
  in a sub-make, a bare ``-j``, make 4.3 under make 4.4.1's fifo pool, a fifo whose make
  has exited, and a fifo out of reach in a private /tmp (``unshare``). (Issue 15 item 3.)
* ``makejobs status`` in a recipe names make as the pool's owner, by pid, and lists the
  other holders. (Issue 15 item 1.)
* ``makejobs serve --trace`` over make 4.3: every job's process span contains the span the
  job logged itself, the busy-slot counter reaches N and never passes it, and ``makejobs
  plot`` draws a PNG of it. (Issue 15 item 2.)
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from peers import Peer, clean_environ, run_captured
from processes import describe
from spans import peak_overlap, read_spans

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
JOB = HERE / "recipes" / "job.py"
PY = sys.executable
TIMEOUT = 60


def _env(**extra: str) -> dict[str, str]:
    old = os.environ.get("PYTHONPATH")
    path = str(REPO) if not old else os.pathsep.join([str(REPO), old])
    return clean_environ(PYTHONPATH=path, **extra)


@pytest.fixture(autouse=True)
def _peers_first_on_path(make441: Peer, ninja: Peer, monkeypatch: pytest.MonkeyPatch) -> None:
    """doctor judges the make and ninja it finds on PATH: let them be the peers (make 4.4.1,
    ninja 1.13), as in CI's venv, not what the system has (Debian: make 4.3, ninja 1.11)."""
    first = dict.fromkeys(str(Path(peer.path).parent) for peer in (make441, ninja))
    monkeypatch.setenv("PATH", os.pathsep.join([*first, os.environ.get("PATH", "")]))


def _mq(word: object) -> str:
    """Quote for a make recipe line ($ doubled)."""
    return shlex.quote(str(word)).replace("$", "$$")


MJ = f"{_mq(PY)} -m makejobs"


def _make(
    make: Peer, tmp: Path, recipes: dict[str, str], *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    lines = [f".PHONY: {' '.join(recipes)}"]
    for target, recipe in recipes.items():
        lines += [f"{target}:", *(f"\t{line}" for line in recipe.splitlines())]
    (tmp / "Makefile").write_text("\n".join(lines) + "\n")
    return run_captured([make.path, "-s", *args], tmp, TIMEOUT, env={**_env(), **(env or {})})


def _doctor(
    make: Peer,
    tmp: Path,
    line: str,
    *args: str,
    target: str = "check",
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run *line* (which writes doctor's JSON to doctor.json) as a recipe; the report."""
    done = _make(make, tmp, {target: line}, *args, target, env=env)
    report_file = tmp / "doctor.json"
    assert report_file.exists(), describe(done)
    report: dict[str, Any] = json.loads(report_file.read_text())
    return report


def _ids(report: dict[str, Any]) -> list[str]:
    return [finding["id"] for finding in report["findings"]]


DOCTOR = f"{MJ} doctor --json > doctor.json"


def test_make43_recipe_without_plus(make43: Peer, tmp_path: Path) -> None:
    report = _doctor(make43, tmp_path, f"{DOCTOR} || true", "-j2")
    assert _ids(report) == ["recipe-without-plus"], report
    finding = report["findings"][0]
    assert "make (pid" in finding["message"] and "'+'" in finding["fix"]


def test_make441_pipe_mode_recipe_without_plus(make441: Peer, tmp_path: Path) -> None:
    report = _doctor(make441, tmp_path, f"{DOCTOR} || true", "-j2", "--jobserver-style=pipe")
    assert _ids(report) == ["recipe-not-recursive"], report


def test_make43_descriptors_reused(make43: Peer, tmp_path: Path) -> None:
    # make 4.3 names fds 3,4 in MAKEFLAGS; without '+' they are closed, and this recipe
    # opens other files on those numbers.
    line = f"{MJ} doctor --json 3</etc/hostname 4>/dev/null > doctor.json || true"
    report = _doctor(make43, tmp_path, line, "-j2")
    assert _ids(report) == ["stale-fds"], report
    assert "/etc/hostname" in report["findings"][0]["message"]


def test_make43_python_parent_with_close_fds(make43: Peer, tmp_path: Path) -> None:
    code = (
        "import subprocess, sys;"
        " subprocess.run([sys.executable, '-m', 'makejobs', 'doctor', '--json'],"
        " stdout=open('doctor.json', 'w'))"
    )
    report = _doctor(make43, tmp_path, f"+{_mq(PY)} -c {_mq(code)}", "-j2")
    assert _ids(report) == ["python-close-fds"], report


@pytest.mark.parametrize("peer_key", ["make43", "make441"])
def test_j_forced_in_a_submake(
    peer_key: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    make: Peer = request.getfixturevalue(peer_key)
    recipes = {"outer": "+$(MAKE) -j2 inner", "inner": f"+{DOCTOR}"}
    done = _make(make, tmp_path, recipes, "-j4", "outer")
    assert "forced in submake" in done.stderr, describe(done)
    report = json.loads((tmp_path / "doctor.json").read_text())
    assert report["usable"] is True and "submake-forced" in _ids(report), report
    finding = next(f for f in report["findings"] if f["id"] == "submake-forced")
    assert "'-j2' on its command line" in finding["message"], finding
    assert "$(MAKE) alone" in finding["fix"]


def test_make43_bare_j(make43: Peer, tmp_path: Path) -> None:
    report = _doctor(make43, tmp_path, f"+{DOCTOR} || true", "-j")
    assert _ids(report) == ["bare-j"], report


def test_make43_under_a_fifo_pool(make43: Peer, make441: Peer, tmp_path: Path) -> None:
    line = f"+{MJ} doctor --json -- {make43.path} > doctor.json"
    report = _doctor(make441, tmp_path, line, "-j2")
    assert report["usable"] is True, report
    assert _ids(report) == ["make-too-old-for-fifo"], report
    assert "4.3" in report["findings"][0]["message"]


def _old_ninja() -> str | None:
    """A ninja older than 1.13 on this machine (Debian/Ubuntu ship 1.11), if any."""
    for path in ("/usr/bin/ninja", "/bin/ninja", "/usr/local/bin/ninja"):
        if os.access(path, os.X_OK):
            done = subprocess.run([path, "--version"], capture_output=True, text=True)
            version = tuple(int(p) for p in done.stdout.split(".")[:2] if p.isdigit())
            if version and version < (1, 13):
                return path
    return None


@pytest.mark.skipif(_old_ninja() is None, reason="no ninja older than 1.13 installed")
def test_ninja_without_a_jobserver_client(make441: Peer, tmp_path: Path) -> None:
    old = _old_ninja()
    report = _doctor(make441, tmp_path, f"+{MJ} doctor --json -- {old} > doctor.json", "-j2")
    assert report["usable"] is True and _ids(report) == ["ninja-no-client"], report
    assert "1.13" in report["findings"][0]["message"]


def test_fifo_of_a_make_that_has_exited(make441: Peer, tmp_path: Path) -> None:
    _make(make441, tmp_path, {"save": 'echo "$$MAKEFLAGS" > flags'}, "-j2", "save")
    makeflags = (tmp_path / "flags").read_text().strip()
    assert "fifo:" in makeflags
    done = run_captured(
        [PY, "-m", "makejobs", "doctor", "--json"],
        tmp_path,
        TIMEOUT,
        env=_env(MAKEFLAGS=makeflags),
    )
    report = json.loads(done.stdout)
    assert done.returncode == 2 and _ids(report) == ["fifo-missing"], report
    assert "has exited" in report["findings"][0]["message"]


def _unshare_works() -> bool:
    try:
        return subprocess.run(["unshare", "-Urm", "true"], capture_output=True).returncode == 0
    except OSError:
        return False


@pytest.mark.skipif(not _unshare_works(), reason="user namespaces (unshare -Urm) unavailable")
def test_fifo_out_of_reach_in_a_private_tmp(make441: Peer, tmp_path: Path) -> None:
    # make 4.4.1 makes its fifo in MAKE_TMPDIR; a tmpfs over that directory is what
    # PrivateTmp= does to /tmp, without hiding the Python (CI's venv is under /tmp).
    fifo_dir = tmp_path / "make-tmp"
    fifo_dir.mkdir()
    inner = f"mount -t tmpfs tmpfs {_mq(fifo_dir)} && {MJ} doctor --json > doctor.json"
    line = f"+unshare -Urm sh -c {_mq(inner)} || true"
    env = {"MAKE_TMPDIR": str(fifo_dir)}
    report = _doctor(make441, tmp_path, line, "-j2", env=env)
    assert _ids(report) == ["fifo-private-tmp"], report
    assert str(fifo_dir) in report["findings"][0]["message"]  # the fifo make made there
    assert "MAKE_TMPDIR" in report["findings"][0]["fix"]


# -- status: holders -------------------------------------------------------------------


@pytest.mark.parametrize("peer_key", ["make43", "make441"])
def test_status_names_make_as_the_owner(
    peer_key: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    make: Peer = request.getfixturevalue(peer_key)
    recipes = {"look": f"+{MJ} status --json > status.json"}
    done = _make(make, tmp_path, recipes, "-j3", "look")
    assert done.returncode == 0, describe(done)
    report = json.loads((tmp_path / "status.json").read_text())
    owner = report["owner"]
    assert owner is not None and owner["role"] == "make", report["holders"]
    assert owner["command"][0] == make.path
    if report["style"] == "fifo":
        assert report["path"].endswith(f"GMfifo{owner['pid']}")  # make 4.4 names it so
    assert report["tokens"]["total"] == 2 and report["tokens"]["held_by_makejobs_clients"] is None


# -- serve --trace and plot ------------------------------------------------------------


def test_trace_of_a_make_build_and_its_picture(make43: Peer, tmp_path: Path) -> None:
    log = tmp_path / "spans.log"
    names = [f"j{i}" for i in range(6)]
    job = f"{_mq(PY)} {_mq(JOB)} {_mq(log)} $@ 0.3"
    lines = [f".PHONY: all {' '.join(names)}", f"all: {' '.join(names)}"]
    for name in names:
        lines += [f"{name}:", f"\t{job}"]
    (tmp_path / "Makefile").write_text("\n".join(lines) + "\n")
    trace = tmp_path / "build.json"
    done = run_captured(
        [PY, "-m", "makejobs", "serve", "-j3", "--trace", str(trace), "--", make43.path, "-s"],
        tmp_path,
        TIMEOUT,
        env=_env(),
    )
    assert done.returncode == 0, describe(done)
    document = json.loads(trace.read_text())
    origin = document["otherData"]["monotonic_origin_s"] * 1e9
    logged = {span.name: span for span in read_spans(log)}
    assert peak_overlap(logged.values()) == 3
    busy = [e["args"]["busy"] for e in document["traceEvents"] if e["ph"] == "C"]
    assert max(busy) == 3 and min(busy) >= 1, busy
    processes = [e for e in document["traceEvents"] if e["ph"] == "X"]
    assert any(e["args"]["cmdline"][:1] == [make43.path] for e in processes)
    tick = 10e6  # start times are kernel ticks (10 ms)
    for name, span in logged.items():
        mine = [e for e in processes if e["args"]["cmdline"][-2:] == [name, "0.3"]]
        assert len(mine) == 1, (name, [e["args"]["cmdline"] for e in processes])
        start = origin + mine[0]["ts"] * 1e3
        end = start + mine[0]["dur"] * 1e3
        # The process outlives the span it logged, and is seen within a sample or two.
        assert start <= span.start + tick and end >= span.end, (name, start, end, span)
        assert end <= span.end + 0.5e9
    out = tmp_path / "build.png"
    drawn = run_captured(
        [PY, "-m", "makejobs", "plot", str(trace), "-o", str(out)], tmp_path, TIMEOUT, env=_env()
    )
    assert drawn.returncode == 0, describe(drawn)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "idle slot-time" in drawn.stdout
