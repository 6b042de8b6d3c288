"""makejobs.setuptools.build_ext under real make 4.3 and 4.4.1, and through pip.

A generated C extension (a module init and a few helper files that take the compiler
some 0.1 s each) is built by a ``+`` recipe beside shell recipes. setuptools' ``CC`` is
``recipes/cc_span.py``, which logs a span around every compiler and linker it runs, so
the peak of compilers and recipes running at once is measured, never assumed, as is the
link starting only after its objects are done. make must not print ``INTERNAL`` (a lost
or extra token).
"""

from __future__ import annotations

import os
import re
import sys
import zipfile
from pathlib import Path

import pytest

import spans
from c_extension import write_sources
from peers import Peer, clean_environ, run_captured
from processes import describe

HERE = Path(__file__).resolve().parent
JOB = HERE / "recipes" / "job.py"
CC_SPAN = HERE / "recipes" / "cc_span.py"
TIMEOUT = 180
HELPERS = 6

SETUP = """\
import glob
from setuptools import Extension, setup
{import_line}

setup(
    name="spanned",
    version="0",
    ext_modules=[Extension("spanned", sorted(glob.glob("src/*.c")))],
    {cmdclass}
)
"""

PYPROJECT = """\
[build-system]
requires = ["setuptools"]
build-backend = "setuptools.build_meta"
"""

MAKEFILE = """\
all: ext sh-1 sh-2
ext:
\t+@echo "$$MAKEFLAGS" > $(FLAGS) && $(BUILD)
sh-1 sh-2:
\t$(PYTHON) $(JOB) $(LOG) $@ $(SH_SECONDS)
"""


def write_project(root: Path, *, stock: bool = False, functions: int = 10) -> None:
    write_sources(root / "src", "spanned", HELPERS, functions)
    (root / "setup.py").write_text(
        SETUP.format(
            import_line="" if stock else "from makejobs.setuptools import build_ext",
            cmdclass="" if stock else 'cmdclass={"build_ext": build_ext},',
        )
    )
    (root / "pyproject.toml").write_text(PYPROJECT)
    (root / "Makefile").write_text(MAKEFILE)


def build_environ(tmp_path: Path) -> dict[str, str]:
    """No inherited pool; the compiler (and linker) logs spans."""
    return clean_environ(
        CC=f"{sys.executable} {CC_SPAN} {tmp_path / 'spans.log'}",
        CC_SPAN_MAKEFLAGS=str(tmp_path / "makeflags.log"),
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_NO_INPUT="1",
    )


def run_make(make: Peer, root: Path, tmp_path: Path, build: str) -> str:
    proc = run_captured(
        make.argv(
            "-j3",
            f"BUILD={build}",
            f"PYTHON={sys.executable}",
            f"JOB={JOB}",
            f"LOG={tmp_path / 'spans.log'}",
            f"FLAGS={tmp_path / 'recipe.flags'}",
            # Long enough to overlap the compiles: a build beside them that ignored make's
            # pool would push the peak over 3.
            "SH_SECONDS=1.0",
        ),
        root,
        TIMEOUT,
        env=build_environ(tmp_path),
    )
    assert proc.returncode == 0, describe(proc)
    assert "INTERNAL" not in proc.stderr, describe(proc)
    return proc.stdout + proc.stderr


def check_spans(tmp_path: Path, *, parallel: bool) -> tuple[int, int]:
    """Peak of everything and of the compilers; the link came after every compile."""
    everything = spans.read_spans(tmp_path / "spans.log")
    compiles = [s for s in everything if s.name.startswith("compile-")]
    (link,) = [s for s in everything if s.name.startswith("link-")]
    assert len(compiles) == HELPERS + 1
    assert link.start >= max(s.end for s in compiles), "the link started before its objects"
    peak, compile_peak = spans.peak_overlap(everything), spans.peak_overlap(compiles)
    assert peak <= 3, f"compilers and recipes ran {peak} at once under make -j3"
    if parallel:
        assert compile_peak >= 2, "the compiles never ran side by side"
    else:
        assert compile_peak == 1
    return peak, compile_peak


@pytest.mark.parametrize(("key", "style"), [("make43", "pipe"), ("make441", "fifo")])
def test_build_ext_under_make_compiles_on_makes_pool(
    key: str, style: str, peers: dict[str, Peer], tmp_path: Path
) -> None:
    root = tmp_path / "project"
    write_project(root)
    build = f"{sys.executable} setup.py build_ext --inplace"
    output = run_make(peers[key], root, tmp_path, build)
    assert "JobserverUnavailable" not in output, output
    peak, compile_peak = check_spans(tmp_path, parallel=True)
    print(f"{key} ({style}) -j3: peak {peak}, compilers {compile_peak}")
    if style == "fifo":
        check_on_makes_fifo(tmp_path)


def check_on_makes_fifo(tmp_path: Path) -> None:
    """Every compiler was started by a job on the fifo pool of the recipe's make."""
    recipe = (tmp_path / "recipe.flags").read_text()
    (fifo,) = re.findall(r"--jobserver-auth=(fifo:\S+)", recipe)
    for line in (tmp_path / "makeflags.log").read_text().splitlines():
        assert f"--jobserver-auth={fifo}" in line, "a compile ran outside make's fifo pool"


def built_wheel_files(root: Path) -> list[str]:
    (wheel,) = (root / "dist").glob("spanned-0-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


PIP_WHEEL = "-m pip wheel --no-build-isolation --no-deps --no-cache-dir -v -w dist ."


# python -m build, the other front end the README names; -n: no isolated environment.
BUILD_WHEEL = "-m build --no-isolation --wheel --outdir dist ."


@pytest.mark.parametrize("front_end", [PIP_WHEEL, BUILD_WHEEL], ids=["pip-wheel", "build"])
def test_wheel_under_make441_builds_on_makes_fifo_pool(
    make441: Peer, tmp_path: Path, front_end: str
) -> None:
    # pip and build run setuptools in a subprocess that closes inherited descriptors; make
    # 4.4's fifo is reached by path, so the build still joins make's pool.
    root = tmp_path / "project"
    write_project(root)
    output = run_make(make441, root, tmp_path, f"{sys.executable} {front_end}")
    assert "compiling one file at a time" not in output, output
    assert any(name.startswith("spanned.") for name in built_wheel_files(root))
    check_spans(tmp_path, parallel=True)
    check_on_makes_fifo(tmp_path)


def test_pip_wheel_under_make43_warns_and_compiles_one_at_a_time(
    make43: Peer, tmp_path: Path
) -> None:
    # The documented limit: a pipe pool does not survive pip's subprocess, so the build
    # says so and falls back to one job at a time rather than oversubscribing make.
    root = tmp_path / "project"
    write_project(root)
    output = run_make(make43, root, tmp_path, f"{sys.executable} {PIP_WHEEL}")
    # pip before 25 prints the backend's stderr, where the warning is named by its class;
    # later pips forward only UserWarnings, as "BuildBackendWarning: <message>".
    assert re.search(r"(JobserverUnavailable|BuildBackendWarning): MAKEFLAGS: ", output), output
    assert "the read fd 3 is not open in this process" in output, output
    assert "compiling one file at a time" in output, output
    assert "makejobs bridge --style fifo" in output, output
    assert any(name.startswith("spanned.") for name in built_wheel_files(root))
    check_spans(tmp_path, parallel=False)


def test_a_compile_error_reads_as_setuptools_own(tmp_path: Path) -> None:
    results = []
    for stock in (True, False):
        root = tmp_path / ("stock" if stock else "ours")
        write_project(root, stock=stock, functions=0)
        (root / "src" / "part3.c").write_text("long part3(void) { return 1 +; }\n")
        env = clean_environ()
        results.append(
            run_captured([sys.executable, "setup.py", "build_ext"], root, TIMEOUT, env=env)
        )
    stock_proc, our_proc = results
    assert stock_proc.returncode == our_proc.returncode == 1, describe(our_proc)
    # The compiler's diagnostics, then setuptools' own last line naming the command.
    stock_last = stock_proc.stderr.strip().splitlines()[-1]
    assert our_proc.stderr.strip().splitlines()[-1] == stock_last, describe(our_proc)
    assert stock_last.startswith("error: ")
    for proc in results:
        assert "part3.c:1:" in proc.stderr and "expected expression" in proc.stderr
    # No extension was built from a failed compile.
    assert not list((tmp_path / "ours").glob("**/spanned*.so"))


def test_without_a_pool_the_build_makes_one_of_the_usable_cpus(tmp_path: Path) -> None:
    root = tmp_path / "project"
    write_project(root, functions=4)
    proc = run_captured(
        [sys.executable, "setup.py", "build_ext", "--inplace"],
        root,
        TIMEOUT,
        env=build_environ(tmp_path),
    )
    assert proc.returncode == 0, describe(proc)
    log = spans.read_spans(tmp_path / "spans.log")
    compiles = [s for s in log if s.name.startswith("compile-")]
    assert spans.peak_overlap(compiles) == len(os.sched_getaffinity(0))
    # --force compiles everything again, as setuptools does (up-to-date objects otherwise
    # stay, see tests/test_setuptools_build_ext.py).
    (tmp_path / "spans.log").unlink()
    argv = [sys.executable, "setup.py", "build_ext", "--inplace", "--force"]
    proc = run_captured(argv, root, TIMEOUT, env=build_environ(tmp_path))
    assert proc.returncode == 0, describe(proc)
    log = spans.read_spans(tmp_path / "spans.log")
    assert len([s for s in log if s.name.startswith("compile-")]) == HELPERS + 1
