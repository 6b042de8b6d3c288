"""``makejobs plot FILE [-o OUT]``

Draw a trace written by ``makejobs serve --trace FILE`` (see
:mod:`makejobs.cli._trace`) as a PNG or SVG picture (by OUT's suffix;
default: FILE with ``.png``):

* on top, the busy slots over time against N, the pool's size, with the
  idle slot-time (N minus busy, summed over the build) shaded and called
  out, in slot-seconds and as a share of N x makespan;
* below, a Gantt chart: one bar per process, on the lanes the trace gave
  them, coloured by program.

matplotlib comes with the ``plot`` extra (``pip install 'makejobs[plot]'``)
and is imported only here, when a picture is drawn.

Exit status: 0 the picture was written; 1 FILE cannot be read or is not a
makejobs trace, matplotlib is missing, or OUT cannot be written.
"""

from __future__ import annotations

import argparse
import os

from ._args import fill
from ._console import say

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["Summary", "command", "configure", "summarize"]


class TraceError(Exception):
    """The file is not a trace ``makejobs plot`` can draw; ``str()`` says why."""


class Summary:
    """What a trace says, in seconds from its start.

    Attributes:
        slots: N, the pool's size.
        makespan: how long the traced command ran.
        busy: (time, busy slots) steps, the last one held until *makespan*.
        spans: (lane, start, end, label, program) per process.
        idle: slot-seconds no job used: the integral of N - busy.
        command: the command serve ran.
    """

    def __init__(
        self,
        slots: int,
        makespan: float,
        busy: list[tuple[float, int]],
        spans: list[tuple[int, float, float, str, str]],
        command: list[str],
    ) -> None:
        self.slots = slots
        self.makespan = makespan
        self.busy = busy
        self.spans = spans
        self.command = command
        self.idle = 0.0
        for (t, used), following in zip(busy, [*busy[1:], (makespan, 0)]):
            width = max(0.0, min(following[0], makespan) - t)
            self.idle += width * max(0, slots - used)

    @property
    def capacity(self) -> float:
        """N x makespan: the slot-seconds the pool offered."""
        return self.slots * self.makespan

    @property
    def idle_share(self) -> float:
        return self.idle / self.capacity if self.capacity > 0 else 0.0


def summarize(document: object) -> Summary:
    """Read a trace document (parsed JSON); raises :class:`TraceError` if it is not one."""
    if not isinstance(document, dict) or not isinstance(document.get("traceEvents"), list):
        raise TraceError("no traceEvents list: not a Chrome trace")
    other = document.get("otherData")
    if not isinstance(other, dict) or "makejobs_trace" not in other:
        raise TraceError("not written by `makejobs serve --trace` (no otherData.makejobs_trace)")
    try:
        slots = int(other["slots"])
        makespan = float(other["duration_us"]) / 1e6
        busy = []
        spans = []
        for event in document["traceEvents"]:
            kind = event.get("ph")
            if kind == "C" and event.get("name") == "busy slots":
                busy.append((float(event["ts"]) / 1e6, int(event["args"]["busy"])))
            elif kind == "X":
                start = float(event["ts"]) / 1e6
                cmdline = event.get("args", {}).get("cmdline") or []
                program = os.path.basename(cmdline[0]) if cmdline else "?"
                spans.append(
                    (
                        int(event["tid"]),
                        start,
                        start + float(event["dur"]) / 1e6,
                        str(event["name"]),
                        program,
                    )
                )
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise TraceError(f"malformed event or field: {e!r}") from None
    busy.sort()
    command = [str(word) for word in other.get("command") or []]
    return Summary(slots, makespan, busy, spans, command)


def _matplotlib() -> Any:
    """matplotlib, imported by name: mypy checks makejobs as Python 3.9, and matplotlib's
    own sources (which it would follow from an import statement) use 3.10 syntax."""
    import importlib

    return importlib.import_module("matplotlib")


def _draw(summary: Summary, out: str) -> None:
    _matplotlib().use("Agg")  # no display needed
    import importlib

    plt: Any = importlib.import_module("matplotlib.pyplot")

    lanes = max((lane for lane, *_ in summary.spans), default=0)
    figure, (top, bottom) = plt.subplots(
        2,
        1,
        sharex=True,
        figsize=(11, 3 + min(0.22 * lanes, 12)),
        gridspec_kw={"height_ratios": [1, max(1.0, min(lanes / 6, 4))]},
    )
    end = summary.makespan
    times = [t for t, _ in summary.busy] + [end]
    values = [b for _, b in summary.busy]
    values.append(values[-1] if values else 0)
    top.step(times, values, where="post", color="tab:blue", label="busy slots")
    top.fill_between(
        times,
        values,
        [summary.slots] * len(times),
        step="post",
        where=[v < summary.slots for v in values],
        color="tab:red",
        alpha=0.25,
        label="idle slots",
    )
    top.axhline(
        summary.slots, color="black", linestyle="--", linewidth=1, label=f"N = {summary.slots}"
    )
    top.set_ylim(0, summary.slots + 1)
    top.set_ylabel("slots")
    top.legend(loc="lower right", fontsize="small")
    top.set_title(
        f"idle slot-time: {summary.idle:.2f} slot-s of {summary.capacity:.2f}"
        f" ({summary.idle_share:.0%} of N x makespan); makespan {end:.2f} s",
        fontsize="medium",
    )
    programs = sorted({program for *_, program in summary.spans})
    palette = plt.get_cmap("tab20")
    colours = {program: palette(i % 20) for i, program in enumerate(programs)}
    for lane, start, stop, label, program in summary.spans:
        bottom.barh(lane, stop - start, left=start, height=0.8, color=colours[program])
        if end > 0 and (stop - start) / end > 0.08:
            bottom.text(start, lane, " " + label, va="center", fontsize="x-small", clip_on=True)
    bottom.set_ylim(lanes + 0.6, 0.4)
    bottom.set_ylabel("processes (lanes)")
    bottom.set_xlabel("seconds")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[p]) for p in programs[:12]]
    if handles:
        bottom.legend(handles, programs[:12], loc="upper right", fontsize="x-small")
    figure.suptitle(
        "makejobs serve -j" + str(summary.slots) + " -- " + " ".join(summary.command)[:90]
    )
    figure.tight_layout()
    figure.savefig(out)
    plt.close(figure)


def command(args: argparse.Namespace) -> int:
    """Run ``makejobs plot``; the exit status (see the module docstring)."""
    out: str = args.output or os.path.splitext(args.file)[0] + ".png"
    if os.path.splitext(out)[1].lower() not in (".png", ".svg"):
        say("plot", f"cannot tell the picture format of {out!r}: name it .png or .svg")
        return 1
    try:
        with open(args.file, encoding="utf-8") as f:
            import json

            document = json.load(f)
        summary = summarize(document)
    except OSError as e:
        say("plot", f"cannot read {args.file}: {e.strerror or e}")
        return 1
    except ValueError as e:  # json.JSONDecodeError, TraceError
        say("plot", f"{args.file}: {e}")
        return 1
    try:
        _matplotlib()
    except ImportError:
        say(
            "plot",
            "matplotlib is not installed; install it with `pip install 'makejobs[plot]'`"
            " (or open the trace in https://ui.perfetto.dev)",
        )
        return 1
    try:
        _draw(summary, out)
    except OSError as e:
        say("plot", f"cannot write {out}: {e.strerror or e}")
        return 1
    print(
        f"{out}: {len(summary.spans)} processes over {summary.makespan:.2f} s;"
        f" idle slot-time {summary.idle:.2f} slot-s ({summary.idle_share:.0%} of"
        f" {summary.slots} x makespan)"
    )
    return 0


def configure(parser: argparse.ArgumentParser) -> None:
    """Give the ``plot`` parser its description, options and command."""
    parser.description = fill(
        "Draw a trace written by `makejobs serve --trace FILE`: busy slots against N on top,"
        " with the idle slot-time shaded and counted, and a Gantt chart of the processes"
        " below. Needs matplotlib (pip install 'makejobs[plot]')."
    )
    parser.epilog = (
        "exit status: 0 the picture was written; 1 FILE cannot be read or is not a makejobs"
        " trace, matplotlib is missing, or OUT cannot be written; 2 usage error.\n\n"
        "example: makejobs serve -j8 --trace build.json -- make && makejobs plot build.json"
        " -o build.svg"
    )
    parser.add_argument("file", metavar="FILE", help="a trace from makejobs serve --trace")
    parser.add_argument(
        "-o",
        "--output",
        metavar="OUT",
        help="the picture to write, .png or .svg (default: FILE with .png)",
    )
    parser.set_defaults(func=command)
