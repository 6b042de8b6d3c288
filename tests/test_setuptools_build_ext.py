"""makejobs.setuptools.build_ext builds real C extensions with the real compiler.

Each test writes a small project (a few C files and a module init) and runs
``python setup.py build_ext`` in a subprocess, without any advertised pool, so the
command creates its own pool of the usable CPUs. Errors compared with stock setuptools,
and builds under make measured from spans: integration/test_setuptools_peers.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from c_extension import write_sources
from makejobs import JobserverUnavailable

SETUP = """\
import glob
from setuptools import Extension, setup
{import_line}

extensions = [
    Extension(name, sorted(glob.glob(f"{{name}}/*.c")), optional=name.startswith("opt"))
    for name in {names!r}
]
setup(name="demo", version="0", ext_modules=extensions, {cmdclass})
"""


def write_project(root: Path, names: dict[str, int], *, stock: bool = False) -> None:
    """Extensions *names* (name -> number of helper files), each summing its helpers."""
    for name, helpers in names.items():
        write_sources(root / name, name, helpers)
    (root / "setup.py").write_text(
        SETUP.format(
            import_line="" if stock else "from makejobs.setuptools import build_ext",
            names=list(names),
            cmdclass="" if stock else 'cmdclass={"build_ext": build_ext}',
        )
    )


def build(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--inplace", *args],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )


def compiled(proc: subprocess.CompletedProcess[str]) -> list[str]:
    """The sources the build compiled, in the order their jobs reported."""
    return re.findall(r" -c (\S+\.c) -o ", proc.stdout)


def total(root: Path, *names: str) -> list[int]:
    """What each built extension's total() returns, imported in a fresh interpreter."""
    code = "; ".join(f"import {n}; print({n}.total())" for n in names)
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return [int(line) for line in proc.stdout.split()]


def test_builds_every_extension_and_recompiles_only_what_changed(tmp_path: Path) -> None:
    write_project(tmp_path, {"alpha": 3, "beta": 1, "optbroken": 1})
    broken = tmp_path / "optbroken" / "part0.c"
    broken.write_text("long part0(void) { return 1 +; }\n")
    proc = build(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(compiled(proc)) == [
        "alpha/module.c",
        "alpha/part0.c",
        "alpha/part1.c",
        "alpha/part2.c",
        "beta/module.c",
        "beta/part0.c",
        "optbroken/module.c",
        "optbroken/part0.c",
    ]
    # An optional extension that fails is a warning, as in setuptools; the rest builds.
    assert 'building extension "optbroken" failed' in proc.stderr
    assert "expected expression" in proc.stderr
    assert total(tmp_path, "alpha", "beta") == [1 + 2 + 3, 1]

    # One source changes: only its object is compiled again and its extension relinked
    # (the failed one is retried: its good object is kept).
    part = tmp_path / "alpha" / "part1.c"
    part.write_text("long part1(void) { return 20; }\n")
    proc = build(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(compiled(proc)) == ["alpha/part1.c", "optbroken/part0.c"]
    assert "building 'beta' extension" not in proc.stdout
    assert total(tmp_path, "alpha") == [1 + 20 + 3]


def test_the_fallback_warning_is_one_a_build_front_end_passes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # pip 25 and later run the backend under catch_warnings(record=True) and pass on only
    # UserWarnings: a pipe pool that pip's subprocess closed must still be reported.
    from makejobs import setuptools as plugin

    r, w = os.pipe()
    os.close(r)
    os.close(w)
    for name in ("MFLAGS", "CARGO_MAKEFLAGS", "MAKEJOBS_LEDGER"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MAKEFLAGS", f" -j3 --jobserver-auth={r},{w}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with plugin._pool(None) as pool:
            assert pool.slots == 1
    passed_on = [c for c in caught if issubclass(c.category, UserWarning)]
    assert [c.category for c in passed_on] == [JobserverUnavailable], caught
    assert "compiling one file at a time" in str(passed_on[0].message)
