"""Which consumers join a pool, by pool style and by how the child is started: measured.

This is the evidence behind makejobs' defaults (README, "Which form reaches which
consumer"). Each *cell* creates a pool of :data:`SLOTS` slots in this process, starts one
consumer on it in one way, and measures the peak of overlapping job spans
(``tests/spans.py``). Every consumer is set up to run more than :data:`SLOTS` jobs at once if
it ignored the pool, so the peak tells what happened:

* ``joins``: the peak is exactly the pool's N (and never more);
* ``serial``: the consumer saw the pool, could not use it, and ran one job at a time
  (make's "jobserver unavailable: using -j1");
* ``own``: the consumer ran on its own parallelism, above N (the pool ignored);
* ``fails``: the consumer exited non-zero (make 4.3 on a ``fifo:`` auth).

Consumers (:data:`CONSUMERS`): GNU make 4.3 and 4.4.1, ninja 1.13 (the PyPI build, which
also accepts pipes), ``fifo_only_client.py`` (joins only ``fifo:``, as upstream ninja
1.13; started as a program named ``ninja``, as that ninja would be), and cargo on the
path-only workspace of ``cargo_ws.py``.

Ways (:data:`WAYS`): a pipe pool whose descriptors the child inherits (``pass_fds``, a
``+`` recipe, ``os.system``); a pipe pool and a plain ``subprocess.run`` (which closes
them); a fifo pool; a pipe pool offered by path (``fifo:/proc/PID/fd/N``, what
``style="fifo"`` gives, and what a job would export); and ``pool.run()`` with its
default ``style="auto"`` on a pipe pool and on a fifo pool.

``python integration/child_styles.py [CONSUMER ...]`` measures every cell and prints the README table
(about a minute); the integration tests measure the cells that decide a default.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))  # spans.py

import cargo_ws  # noqa: E402
from makejobs.errors import TokenCountWarning  # noqa: E402
from makejobs.pool import TokenPool  # noqa: E402
from peers import Peer, clean_environ, find_peer  # noqa: E402
from spans import peak_overlap, read_spans  # noqa: E402

JOB = HERE / "recipes" / "job.py"
FIFO_ONLY = HERE / "fifo_only_client.py"
PY = sys.executable
#: The pool's total parallelism: 2, below every consumer's own (ninja's default on 2 CPUs
#: is 3), so that a consumer ignoring the pool shows.
SLOTS = 2
#: Jobs per consumer (cargo: its crates): more than SLOTS, so a consumer on the pool
#: reaches N and one off the pool exceeds it.
JOBS = 6
JOB_SECONDS = 0.25
RUN_TIMEOUT = 120

CONSUMERS = ("make43", "make441", "ninja", "fifo-only", "cargo")
CONSUMER_TITLES = {
    "make43": "make 4.3",
    "make441": "make 4.4.1",
    "ninja": "ninja 1.13 (PyPI, also takes pipes)",
    "fifo-only": "fifo-only client named `ninja` (as upstream ninja 1.13)",
    "cargo": "cargo",
}
WAYS = ("pipe-inherit", "pipe-plain", "fifo", "pipe-by-path", "auto-pipe", "auto-fifo")
WAY_TITLES = {
    "pipe-inherit": "pipe, fds inherited",
    "pipe-plain": "pipe, plain `subprocess`",
    "fifo": "fifo pool",
    "pipe-by-path": "pipe by path `/proc/PID/fd/N`",
    "auto-pipe": "`pool.run()` auto, pipe pool",
    "auto-fifo": "`pool.run()` auto, fifo pool",
}


@dataclasses.dataclass(frozen=True)
class Outcome:
    kind: str  # "joins", "serial", "own", "fails"
    peak: int
    returncode: int
    tokens_ok: bool  # the pool found all N-1 tokens on close()
    stderr: str
    makeflags: str  # what the child was given, for messages

    def cell(self) -> str:
        """The README table cell."""
        if self.kind == "fails":
            return "**fails**"
        text = {"joins": "joins", "serial": "-j1", "own": "own -j"}[self.kind]
        return f"{text} ({self.peak})"

    def describe(self) -> str:
        return (
            f"{self.kind}, peak {self.peak}, exit {self.returncode}, tokens ok {self.tokens_ok}"
            f"\nMAKEFLAGS={self.makeflags!r}\n--- stderr\n{self.stderr}"
        )


class Bench:
    """Runs cells in *root* with the located *peers* (cargo's workspace built on first use)."""

    def __init__(self, root: Path, peers: Mapping[str, Peer]) -> None:
        self.root = root
        self.peers = peers
        self.base = clean_environ(PYTHONPATH=str(HERE.parent))
        self._manifest: Path | None = None
        self._count = 0

    def _cargo_manifest(self) -> Path:
        if self._manifest is None:
            self._manifest = cargo_ws.prepare(
                self.peers["cargo"].path, self.root / "ws", self.root / "target", self.base
            )
        return self._manifest

    def consumer(self, key: str, cell: Path) -> tuple[list[str], dict[str, str], list[str]]:
        """(argv, extra environment, span names) of one consumer run in *cell*."""
        log = cell / "spans.log"
        names = [f"{key}.{i}" for i in range(1, JOBS + 1)]
        if key in ("make43", "make441"):
            makefile = cell / "Makefile"
            lines = [f".PHONY: all {' '.join(names)}", f"all: {' '.join(names)}"]
            for name in names:
                lines += [f"{name}:", f"\t@{PY} {JOB} {log} $@ {JOB_SECONDS}"]
            makefile.write_text("\n".join(lines) + "\n")
            return self.peers[key].argv("-s", "-f", str(makefile)), {}, names
        if key == "ninja":
            rules = [f"rule job\n  command = {PY} {JOB} {log} $out {JOB_SECONDS} {cell}/$out\n"]
            rules += [f"build {name}: job\n" for name in names]
            (cell / "build.ninja").write_text("".join(rules))
            return self.peers["ninja"].argv("-C", str(cell), "--quiet"), {}, names
        if key == "fifo-only":
            # Named ninja, as the upstream ninja it stands for: auto goes by the name.
            wrapper = cell / "bin" / "ninja"
            wrapper.parent.mkdir()
            wrapper.write_text(f'#!/bin/sh\nexec {PY} {FIFO_ONLY} "$@"\n')
            wrapper.chmod(0o755)
            return [str(wrapper), str(log), key, str(JOBS), str(JOB_SECONDS)], {}, names
        if key == "cargo":
            argv = cargo_ws.build_argv(self.peers["cargo"].path, self._cargo_manifest())
            return argv, cargo_ws.run_env(self.root / "target", log), cargo_ws.span_names()
        raise KeyError(key)

    def measure(self, key: str, way: str) -> Outcome:
        self._count += 1
        cell = self.root / f"{self._count}-{key}-{way}"
        cell.mkdir(parents=True)
        argv, extra, names = self.consumer(key, cell)
        base = {**self.base, **extra}
        style = "fifo" if way in ("fifo", "auto-fifo") else "pipe"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", TokenCountWarning)
            with TokenPool.create(SLOTS, style=style) as pool:
                proc, env = _start(pool, way, argv, base, cell)
        tokens_ok = not any(issubclass(w.category, TokenCountWarning) for w in caught)
        spans = read_spans(cell / "spans.log") if (cell / "spans.log").exists() else []
        peak = peak_overlap(spans)
        if proc.returncode != 0:
            kind = "fails"
        elif sorted(s.name for s in spans) != sorted(names):
            raise AssertionError(f"{key}/{way}: spans {[s.name for s in spans]}\n{proc.stderr}")
        elif peak > SLOTS:
            kind = "own"
        elif peak == SLOTS:
            kind = "joins"
        elif peak == 1:
            kind = "serial"
        else:
            raise AssertionError(f"{key}/{way}: peak {peak} of {SLOTS}\n{proc.stderr}")
        return Outcome(kind, peak, proc.returncode, tokens_ok, proc.stderr, env["MAKEFLAGS"])


def _start(
    pool: TokenPool, way: str, argv: Sequence[str], base: dict[str, str], cwd: Path
) -> tuple[subprocess.CompletedProcess[str], dict[str, str]]:
    """Start *argv* on *pool* the *way* says; (its result, the MAKEFLAGS family it got)."""
    common = {"cwd": cwd, "stdin": subprocess.DEVNULL, "capture_output": True, "text": True}
    common["timeout"] = RUN_TIMEOUT
    if way in ("auto-pipe", "auto-fifo", "pipe-inherit"):
        style = None if way == "pipe-inherit" else "auto"
        from makejobs.advertise import advertise

        with advertise(pool, style, command=argv, base=base) as adv:
            env = adv.environ
        return pool.run(list(argv), env=base, style=style, **common), env  # type: ignore[arg-type]
    if way == "pipe-by-path":
        env = pool.environ(base, style="fifo")
    else:  # "pipe-plain", "fifo": the pool's own form, no descriptors passed
        env = pool.environ(base)
    return subprocess.run(list(argv), env=env, check=False, **common), env  # type: ignore[call-overload]


def table(results: Mapping[tuple[str, str], Outcome]) -> str:
    """The README's markdown table."""
    head = "| consumer | " + " | ".join(WAY_TITLES[w] for w in WAYS) + " |"
    rule = "|---" * (len(WAYS) + 1) + "|"
    rows = [head, rule]
    for key in CONSUMERS:
        if (key, WAYS[0]) not in results:
            continue
        cells = [results[(key, way)].cell() for way in WAYS]
        rows.append(f"| {CONSUMER_TITLES[key]} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: list[str]) -> int:
    import tempfile

    peers = {key: find_peer(key) for key in ("make43", "make441", "ninja", "cargo")}
    consumers = [key for key in CONSUMERS if not argv or key in argv]
    results: dict[tuple[str, str], Outcome] = {}
    progress: Callable[[str], None] = lambda text: print(text, file=sys.stderr)  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="child-styles-") as tmp:
        bench = Bench(Path(tmp), peers)
        for key in consumers:
            for way in WAYS:
                outcome = bench.measure(key, way)
                results[(key, way)] = outcome
                progress(f"{key:10} {way:13} {outcome.kind:7} peak {outcome.peak}")
                if not outcome.tokens_ok:
                    progress(f"  tokens missing or extra:\n{outcome.describe()}")
    print(f"N = {SLOTS}; peak of overlapping jobs in parentheses")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
