"""``makejobs bridge [--style pipe|fifo|auto] [--relay] [-v] -- CMD ...``

Run CMD on the pool this process inherited, offered in the form CMD speaks.
Nothing is created and nothing is held: CMD runs on this process's implicit
slot (the one make started the bridge on) and takes the same tokens as its
siblings, exactly as if make had started it, except that the pool reaches
it in another form (see :mod:`makejobs.advertise`):

* ``--style fifo``: ``--jobserver-auth=fifo:PATH``. A fifo pool keeps its
  path; a pipe pool is offered as ``/proc/PID/fd/N`` (Linux), PID being the
  bridge, which holds the pipe while CMD runs. Where ``/proc/PID/fd`` does
  not open pipes (macOS, BSD), or with ``--relay``, a private fifo relays
  the tokens (:mod:`makejobs.relay`: one token waits in it while CMD runs).
  For upstream ninja 1.13 (it ignores pipe pools) and for make >= 4.4 or
  cargo children that are started without the descriptors (Python's
  ``subprocess`` closes them).
* ``--style pipe``: ``-j --jobserver-fds=R,W --jobserver-auth=R,W`` with
  descriptors CMD inherits. A fifo pool is opened again for CMD. For make
  <= 4.3 (it dies on a fifo pool), make 3.81 (it needs the bare ``-j`` and
  ``--jobserver-fds``) and old ``jobserver`` crates.
* ``--style auto`` (default): from CMD's name, by
  :func:`makejobs.advertise.command_style`: make asks ``make --version``
  (4.4 and later: fifo, older: pipe), ninja gets fifo, cargo pipe, anything
  else the pool's own form.

``-v`` prints the form chosen and why.

Without a usable pool there is nothing to bridge: the bridge says why (no
pool advertised; ``-j1`` or a bare ``-j``; ``--jobserver-auth=-2,-2``, make
4.4's mark for a command it does not run as recursive; closed descriptors)
and runs CMD anyway, as make itself falls back to ``-j1``, with a stale or
closed pool replaced by ``-2,-2`` so that CMD never reads descriptors that now
name other files. ``makejobs serve`` creates a pool instead.

A make given ``-jN`` (even a bare ``-j``) on its command line leaves the pool
("-jN forced in submake: resetting jobserver mode") and so does ``ninja
-jN``: the bridge warns when CMD has one; ``cargo -jN`` stays in the pool.

Exit status and signals as ``serve``'s (:mod:`makejobs.cli._supervise`):
CMD's status, 128+N when it died of signal N (and the bridge dies of the
SIGINT/SIGTERM/SIGHUP it passed on); 126/127 CMD cannot be run; 125 the pool
cannot be offered in the form asked for (its fifo cannot be opened again,
no relay can be made).
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Sequence

from ..advertise import (
    Advertisement,
    CannotAdvertise,
    advertise,
    command_style,
    fifo_path,
    program_kind,
)
from ..errors import JobserverUnavailable
from ..pool import ENVIRON_VARIABLES, TokenPool
from ..protocol import FifoAuth, PipeAuth, parse_makeflags, replace_auth
from ..relay import Relay
from ._args import fill, split_command
from ._console import EXIT_FAILED, say
from ._supervise import SignalCatcher, Signalled, exit_status, run_foreground

TYPE_CHECKING = False  # not typing's: see makejobs/__init__.py
if TYPE_CHECKING:
    import subprocess
    from typing import Any

    from ..advertise import StyleChoice

__all__ = ["command", "configure"]

_NAME = "bridge"

# A -j option of make or ninja: -j, -j8, -kj8 (a cluster), --jobs, --jobs=8.
_OWN_JOBS = re.compile(r"-[A-Za-z]*j[0-9]*|--jobs(=[0-9]*)?")


def _explain_no_pool() -> None:
    """Say why there is nothing to bridge, and what to do instead."""
    flags = parse_makeflags(os.environ.get("MAKEFLAGS") or "")
    if os.environ.get("MAKEFLAGS") is None:
        why = "no jobserver pool is advertised (in MAKEFLAGS, CARGO_MAKEFLAGS or MFLAGS)"
    elif flags.jobs == 1:
        why = "MAKEFLAGS says -j1: make runs one job at a time and advertises no pool"
    elif re.search(r"(^|\s)-[A-Za-z]*j(\s|$)", os.environ["MAKEFLAGS"]):
        why = "MAKEFLAGS has a bare -j: make runs unlimited jobs and advertises no pool"
    else:
        why = "MAKEFLAGS advertises no jobserver pool (make was run without -jN)"
    say(
        _NAME,
        f"{why}; running the command without one. To give it a pool, run it under"
        " `make -jN` in a recipe line starting with '+', or create one with"
        " `makejobs serve -j N -- CMD`",
    )


def _explain_unusable(error: JobserverUnavailable) -> dict[str, str]:
    """Say why the advertised pool cannot be used; the environment to run CMD in.

    A stale pipe auth (make 4.3 leaves the numbers of descriptors it closed)
    is replaced by ``-2,-2``, so that CMD and what it starts never read fds
    that now name other files.
    """
    if parse_makeflags(os.environ.get(error.variable or "MAKEFLAGS") or "").disabled:
        say(
            _NAME,
            "--jobserver-auth=-2,-2 is how make 4.4 tells a command it does not run as"
            " recursive that the pool is not for it: start the recipe line with '+' (or"
            " mention $(MAKE) in it); make 4.4's default fifo pool reaches every recipe",
        )
    else:
        say(_NAME, f"the inherited pool cannot be used: {error}")
    say(_NAME, "running the command without the pool")
    env = dict(os.environ)
    for variable in ENVIRON_VARIABLES:
        value = env.get(variable)
        if value and parse_makeflags(value).advertises_pool():
            env[variable] = replace_auth(value, None, disabled=True)
    return env


def _warn_own_jobs(cmd: Sequence[str]) -> None:
    """Warn when CMD's own -j takes it out of the pool (make and ninja)."""
    kind = program_kind(cmd)
    if kind not in ("make", "ninja"):
        return
    given = next((word for word in cmd[1:] if _OWN_JOBS.fullmatch(word)), None)
    if given is None:
        return
    if kind == "make":
        say(
            _NAME,
            f"`{os.path.basename(cmd[0])} {given}` leaves the pool: a make given -jN (even a"
            ' bare -j) on its command line starts a pool of its own ("-jN forced in'
            f' submake: resetting jobserver mode"); drop {given} to share the pool',
        )
    else:
        say(_NAME, f"`ninja {given}` ignores the pool; drop {given} to share it")


class _Offer:
    """What CMD is started with, from an advertisement or a relay (closed after CMD ran)."""

    def __init__(self, adv: Advertisement | None = None, relay: Relay | None = None) -> None:
        self.adv = adv
        self.relay = relay
        self.environ: dict[str, str] = {}
        self.pass_fds: tuple[int, ...] = ()
        if relay is not None:
            self.environ, self.pass_fds = relay.environ(), relay.pass_fds
        elif adv is not None:
            self.environ, self.pass_fds = adv.environ, adv.pass_fds

    def started(self, child: subprocess.Popen[Any]) -> None:
        """CMD, *child*, has its copies of the descriptors opened for it."""
        if self.adv is not None:
            self.adv.close()

    def close(self) -> None:
        if self.adv is not None:
            self.adv.close()
        relay, self.relay = self.relay, None
        if relay is not None:
            relay.close()
            if relay.lost:
                say(
                    _NAME,
                    f"{relay.lost} jobserver token(s) the relay lent never came back through"
                    " its fifo (a process died holding them); given back to the pool",
                )


def _offer(pool: TokenPool, args: argparse.Namespace, cmd: Sequence[str]) -> _Offer:
    """Offer *pool* to *cmd* as ``--style`` says (and say how, with ``-v``)."""
    style = args.style
    preferred = command_style(cmd) if style == "auto" else style
    relay = None
    if pool.style == "pipe" and preferred == "fifo" and args.relay:
        relay = Relay(pool)
    elif pool.style == "pipe" and preferred == "fifo":
        try:
            fifo_path(pool)
        except CannotAdvertise:
            relay = Relay(pool)  # no /proc/PID/fd here: the relay is the only way
    offer = _Offer(relay=relay.__enter__()) if relay is not None else None
    if offer is None:
        choice: StyleChoice = "pipe" if style == "pipe" else "fifo" if style == "fifo" else "auto"
        offer = _Offer(adv=advertise(pool, choice, command=cmd))
    if args.verbose:
        auth = parse_makeflags(offer.environ.get("MAKEFLAGS") or "").auth
        if isinstance(auth, FifoAuth):
            where = f"fifo:{auth.path}"
        elif isinstance(auth, PipeAuth):
            where = f"fds {auth.read_fd},{auth.write_fd}"
        else:  # pragma: no cover - every offer names the pool
            where = "?"
        form = "fifo" if isinstance(auth, FifoAuth) else "pipe"
        how = " through a relay" if offer.relay is not None else ""
        name = os.path.basename(cmd[0])
        if style != "auto":
            why = f"--style {style}"
        elif preferred is None:
            why = f"{name} has no known preference: the pool's own form"
        else:
            why = f"{name} is best given a {preferred} pool"
        say(_NAME, f"offering the {pool.style} pool as {form}{how} ({where}): {why}")
    return offer


def command(args: argparse.Namespace) -> int:
    """Run ``makejobs bridge``; the exit status (see :mod:`makejobs.cli`)."""
    cmd = split_command(args.command)
    status = EXIT_FAILED
    rekill: int | None = None
    with SignalCatcher() as catcher:
        # Until the command runs, a signal stops everything (the pool is
        # still closed by the finally below).
        catcher.raising = True
        pool: TokenPool | None = None
        offer: _Offer | None = None
        try:
            env: dict[str, str] | None = None
            pass_fds: tuple[int, ...] = ()
            try:
                pool = TokenPool.from_environ()
            except JobserverUnavailable as e:
                env = _explain_unusable(e)
            else:
                if pool is None:
                    _explain_no_pool()
            if pool is not None:
                try:
                    offer = _offer(pool, args, cmd)
                except (CannotAdvertise, OSError) as e:
                    say(_NAME, f"cannot offer the pool as --style {args.style}: {e}")
                    return EXIT_FAILED
                env, pass_fds = offer.environ, offer.pass_fds
                _warn_own_jobs(cmd)
            started = None if offer is None else offer.started
            status, rekill = run_foreground(_NAME, catcher, cmd, env, pass_fds, started=started)
        except Signalled as s:
            status, rekill = s.outcome()
        finally:
            if offer is not None:
                offer.close()
            if pool is not None:
                pool.close()
    return exit_status(status, rekill)


def configure(parser: argparse.ArgumentParser) -> None:
    """Give the ``bridge`` parser its description, options and command."""
    parser.description = fill(
        "Run CMD on the jobserver pool this process inherited (the same tokens, no new"
        " pool, CMD on this process's slot), offered in the form CMD speaks: a pipe pool"
        " as a fifo path for ninja, a fifo pool as pipe descriptors for make 4.3."
    )
    parser.epilog = """\
styles:
  auto (default)  from CMD's name: make asks `make --version` (>= 4.4: fifo, older:
                  pipe); ninja: fifo; cargo, rustc: pipe; anything else: the pool's
                  own form
  fifo            --jobserver-auth=fifo:PATH; a pipe pool by /proc/PID/fd/N (Linux), or
                  through a relay fifo elsewhere (--relay forces it), so it reaches
                  upstream ninja 1.13 and children that do not inherit fds
  pipe            -j --jobserver-fds=R,W --jobserver-auth=R,W with fds CMD inherits; a
                  fifo pool is opened again for CMD (make <= 4.3 dies on fifo pools)

Without a usable pool (none advertised, -j1, a bare -j, --jobserver-auth=-2,-2 of a
recipe line without '+', closed fds) the bridge says why and runs CMD without one;
`makejobs serve -j N -- CMD` creates a pool instead. Give CMD no -j of its own: `make
-jN` and `ninja -jN` leave the pool (the bridge warns); `cargo -jN` stays within it.

Signals: as for serve (passed on to CMD; the bridge dies of the signal CMD died of).

exit status: CMD's; 125 the pool cannot be offered in the form asked for; 126 CMD
cannot be executed; 127 CMD not found.

example (Makefile recipe, make 4.3):  +makejobs bridge --style fifo -- ninja -C build"""
    parser.add_argument(
        "--style",
        choices=("auto", "pipe", "fifo"),
        default="auto",
        help="the form CMD gets the pool in (default: auto; see below)",
    )
    parser.add_argument(
        "--relay",
        action="store_true",
        help="offer a pipe pool as a fifo through a relay, as systems without /proc do",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="say which form CMD gets and why",
    )
    parser.add_argument(
        "command", nargs=argparse.REMAINDER, metavar="-- CMD ...", help="the command to run"
    )
    parser.set_defaults(func=command)
