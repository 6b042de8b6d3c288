"""A path-only cargo workspace whose build scripts log job spans, for the interop matrix.

The workspace has :data:`CRATES` library crates and no dependencies at all, so it builds
offline. Each crate's ``build.rs`` is one *job*: it appends ``S <ns> <name>`` and
``E <ns> <name>`` lines to the log named by ``MJ_LOG`` (the ``tests/spans.py`` format, one
``write`` per line on an ``O_APPEND`` file, timestamps from ``CLOCK_MONOTONIC`` like
``spans.now_ns``) around a sleep of :data:`SCRIPT_SECONDS`. cargo runs a build script while
holding a jobserver token for it, so the spans lie inside cargo's slot holdings.

Compiling the build scripts is slow; running them is not. :func:`prepare` compiles the
workspace once (per test session); afterwards each :func:`build_argv` run only re-runs the
build scripts, because they declare ``cargo:rerun-if-env-changed=MJ_RUN`` and every run
gets a new ``MJ_RUN`` from :func:`run_env` (protocol.md, Appendix A).

No crate is downloaded and nothing is copied from elsewhere: the sources are written here.
"""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

__all__ = [
    "CRATES",
    "SCRIPT_SECONDS",
    "build_argv",
    "prepare",
    "run_env",
    "span_names",
    "write_workspace",
]

CRATES = tuple(f"c{i}" for i in range(1, 6))
SCRIPT_SECONDS = 0.3
SPAN_PREFIX = "cargo"

# clock_gettime is declared by hand (no libc crate: the workspace must build offline with
# no dependencies). The struct layout is Linux's 64-bit timespec.
BUILD_RS = """\
use std::fs::OpenOptions;
use std::io::Write;

#[repr(C)]
struct Timespec {
    tv_sec: i64,
    tv_nsec: i64,
}

extern "C" {
    fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
}

const CLOCK_MONOTONIC: i32 = 1;

fn now_ns() -> u128 {
    let mut ts = Timespec { tv_sec: 0, tv_nsec: 0 };
    let rc = unsafe { clock_gettime(CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime failed");
    ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128
}

// One write per line on an O_APPEND file: lines of concurrent build scripts never interleave
// (a multi-part writeln! could).
fn event(log: &str, kind: &str, name: &str) {
    let line = format!("{} {} {}\\n", kind, now_ns(), name);
    let mut file = OpenOptions::new().append(true).create(true).open(log).expect("open MJ_LOG");
    let written = file.write(line.as_bytes()).expect("write MJ_LOG");
    assert_eq!(written, line.len(), "short write to MJ_LOG");
}

fn main() {
    // A new MJ_RUN re-runs this script without recompiling anything.
    println!("cargo:rerun-if-env-changed=MJ_RUN");
    println!("cargo:rerun-if-changed=build.rs");
    let log = std::env::var("MJ_LOG").expect("MJ_LOG");
    let name = format!("PREFIX.{}", std::env::var("CARGO_PKG_NAME").expect("CARGO_PKG_NAME"));
    event(&log, "S", &name);
    std::thread::sleep(std::time::Duration::from_millis(MILLIS));
    event(&log, "E", &name);
}
"""

_runs = itertools.count(1)


def write_workspace(root: Path) -> Path:
    """Write the workspace under *root* (created); return its ``Cargo.toml``."""
    root.mkdir(parents=True)
    members = ", ".join(f'"{c}"' for c in CRATES)
    manifest = root / "Cargo.toml"
    manifest.write_text(f'[workspace]\nmembers = [{members}]\nresolver = "2"\n')
    script = BUILD_RS.replace("PREFIX", SPAN_PREFIX).replace(
        "MILLIS", str(round(SCRIPT_SECONDS * 1000))
    )
    for crate in CRATES:
        (root / crate / "src").mkdir(parents=True)
        (root / crate / "Cargo.toml").write_text(
            f'[package]\nname = "{crate}"\nversion = "0.1.0"\nedition = "2021"\n'
            'build = "build.rs"\n'
        )
        (root / crate / "src" / "lib.rs").write_text("pub fn f() {}\n")
        (root / crate / "build.rs").write_text(script)
    return manifest


def build_argv(cargo: str, manifest: Path, jobs: int = 8) -> list[str]:
    """``cargo build`` of the workspace. ``-j`` above the crate count: cargo alone would run
    every build script at once, so a measured peak within the pool proves cargo joined it
    (an explicit ``-j`` does not take cargo out of a pool it joined)."""
    return [cargo, "build", "--offline", "-q", "-j", str(jobs), "--manifest-path", str(manifest)]


def run_env(target_dir: Path, log: Path) -> dict[str, str]:
    """Variables a build needs: the shared target dir, the span log and a fresh ``MJ_RUN``."""
    return {
        "CARGO_TARGET_DIR": str(target_dir),
        "CARGO_TERM_COLOR": "never",
        "MJ_LOG": str(log),
        "MJ_RUN": f"{os.getpid()}.{next(_runs)}",
    }


def span_names() -> list[str]:
    """The span names one build logs."""
    return [f"{SPAN_PREFIX}.{crate}" for crate in CRATES]


def prepare(
    cargo: str, root: Path, target_dir: Path, environ: Mapping[str, str], timeout: float = 300
) -> Path:
    """Write the workspace and compile it once (no pool: cargo's own). Return the manifest.

    Raises:
        RuntimeError: the build failed (with cargo's output).
    """
    manifest = write_workspace(root)
    log = root / "prepare-spans.log"
    env = {**environ, **run_env(target_dir, log)}
    proc = subprocess.run(
        build_argv(cargo, manifest),
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"cargo build failed ({proc.returncode}):\n{proc.stderr}")
    return manifest
