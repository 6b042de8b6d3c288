"""``build_ext`` for setuptools that compiles every source file as a job on the jobserver pool.

A drop-in for setuptools' own command::

    from setuptools import Extension, setup
    from makejobs.setuptools import build_ext

    setup(..., ext_modules=[...], cmdclass={"build_ext": build_ext})

Every source file of every extension is compiled as one job (one process
holding one slot, see :class:`makejobs.Jobserver`), and each extension's link
is a job that starts once its own objects are compiled, so a build with many
small extensions keeps every slot busy too. The pool is the one make, ninja or
cargo advertises in the environment (run ``python setup.py build_ext`` from a
``+`` recipe line), otherwise a new pool of the usable CPUs. setuptools' own
``--parallel``/``-j N`` option, when given, asks for a private pool of N slots
instead.

What stays as in setuptools: which extensions are rebuilt (an extension whose
file is newer than its sources and ``depends`` is skipped), the commands run
and their log lines, ``optional`` extensions (a failure is a warning), and the
errors: the first failure stops new jobs from starting, the running ones
finish, and setuptools' own exception is raised, so the message is the one setuptools
prints for a failed command. What changes:

* An object file newer than its source and the extension's ``depends`` is
  not compiled again (setuptools recompiles every file of an extension it
  rebuilds). ``--force`` recompiles everything.
* Each job's output (the command line, the compiler's diagnostics) is held
  until the job ends and then written in one piece, so the messages of
  parallel compilers never interleave.
* Inside :meth:`build_extensions`, the compiler's ``compile`` returns before
  the objects exist (their jobs are running) and ``link``/``create_static_lib``
  return before the output exists; everything is done when
  :meth:`build_extensions` returns. A subclass that reads object files right
  after ``compile`` must wait for that.

``pip install .`` and ``python -m build`` run setuptools in a subprocess that
closes inherited descriptors: a fifo pool (make 4.4) still reaches it, a pipe
pool (make 4.3, ``--jobserver-style=pipe``) does not, and the build then warns
(:class:`~makejobs.JobserverUnavailable`) and compiles one file at a time.
Run such a command through ``makejobs bridge --style fifo --`` to offer a pipe
pool by path.

This module imports setuptools; nothing else in makejobs does.
"""

from __future__ import annotations

import os
import sys
import tempfile
import warnings
from collections.abc import Callable
from typing import Any

from setuptools.command.build_ext import build_ext as _setuptools_build_ext

from .errors import JobserverUnavailable

TYPE_CHECKING = False  # not typing's: see makejobs/__init__.py
if TYPE_CHECKING:
    from .future import Future
    from .jobserver import Jobserver
    from .pool import TokenPool

__all__ = ["build_ext"]

#: The compiler methods that produce files, replaced while extensions are built.
_DEFERRED = ("compile", "link", "create_static_lib")

_FALLBACK_HINT = (
    "; compiling one file at a time. pip and python -m build run setuptools in a"
    " subprocess that closes inherited descriptors: run them through"
    " 'makejobs bridge --style fifo -- ...' to share a pipe pool"
)


# setuptools is Any to mypy (see pyproject.toml), hence the ignore.
class build_ext(_setuptools_build_ext):  # type: ignore[misc]
    """setuptools' ``build_ext``, compiling and linking as jobs on the jobserver pool."""

    def build_extensions(self) -> None:
        self.check_extensions_list(self.extensions)
        build = _ParallelBuild(self)
        try:
            build.defer_compilers()
            for ext in self.extensions:
                build.extension(ext)
            build.finish()
        finally:
            build.close()


class _Job:
    """One deferred compile, link or archive step, and the extension it belongs to."""

    __slots__ = ("call", "error", "ext", "finished", "future", "needs")

    def __init__(
        self, ext: Any, call: tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]
    ) -> None:
        self.ext = ext
        self.call = call
        self.needs: list[_Job] = []  # jobs whose outputs this one reads
        self.future: Future[Any] | None = None
        self.finished = False
        self.error: BaseException | None = None  # what it raised, once finished


class _ParallelBuild:
    """The jobs of one :meth:`build_ext.build_extensions` call.

    Runs in the main thread only. Compiles start as setuptools asks for them
    (``submit`` waits for a slot). A link or archive step waits in ``_blocked``
    until the compiles it needs are done and then starts before the next
    compile, since its extension waits for nothing else.
    """

    def __init__(self, command: build_ext) -> None:
        self._command = command
        self._current: Any = None
        self._jobs: list[_Job] = []  # every job started, in order
        self._running: list[_Job] = []  # started and not yet seen finished
        self._blocked: list[_Job] = []  # link/archive steps waiting for their compiles
        self._compiled: dict[str, _Job] = {}  # object path -> the job compiling it
        self._stopped = False  # a required extension failed: start nothing more
        self._jobserver: Jobserver | None = None
        self._pool: TokenPool | None = None
        self._saved: list[tuple[Any, str, Any]] = []

    # -- the compiler's methods, deferred -------------------------------------------------

    def defer_compilers(self) -> None:
        """Replace the file-producing methods of the command's compilers until close()."""
        command = self._command
        compilers = [command.compiler, getattr(command, "shlib_compiler", None)]
        for compiler in {id(c): c for c in compilers if c is not None}.values():
            self._defer(compiler)

    def _defer(self, compiler: Any) -> None:
        own = vars(compiler)
        for name in _DEFERRED:
            original = getattr(compiler, name, None)
            if original is not None:
                self._saved.append((compiler, name, own.get(name, _MISSING)))
                setattr(compiler, name, self._deferred(compiler, name, original))

    def _deferred(
        self, compiler: Any, name: str, original: Callable[..., Any]
    ) -> Callable[..., Any]:
        if name == "compile":

            def compile(sources: Any, output_dir: Any = None, *args: Any, **kwargs: Any) -> Any:
                return self._compile(compiler, original, sources, output_dir, args, kwargs)

            return compile

        # link(target_desc, objects, ...) and create_static_lib(objects, ...)
        position = 1 if name == "link" else 0

        def produce(*args: Any, **kwargs: Any) -> None:
            objects = kwargs["objects"] if "objects" in kwargs else args[position]
            self._produce(original, [os.fspath(o) for o in objects], args, kwargs)

        return produce

    def _compile(
        self,
        compiler: Any,
        original: Callable[..., Any],
        sources: Any,
        output_dir: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> list[str]:
        # The names compile() itself gives (see CCompiler._setup_compile).
        out = compiler.output_dir if output_dir is None else output_dir
        objects: list[str] = compiler.object_filenames(sources, strip_dir=False, output_dir=out)
        # compile(sources, output_dir, macros, include_dirs, debug, extra_preargs,
        #         extra_postargs, depends)
        depends = kwargs["depends"] if "depends" in kwargs else _nth(args, 5)
        force = bool(getattr(compiler, "force", False))
        for source, obj in zip(sources, objects):
            if not force and _up_to_date(obj, [source, *(depends or ())]):
                continue
            if obj in self._compiled:
                # Compiled already in this build (a source shared by extensions, maybe
                # with other flags): as in a serial build, the earlier compile and
                # whatever reads its object finish before the object is rewritten.
                self._drain()
            self._start_unblocked()
            job = _Job(self._current, (original, ([source], output_dir, *args), kwargs))
            self._start(job)
            self._compiled[obj] = job
        return objects

    def _produce(
        self,
        original: Callable[..., Any],
        objects: list[str],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        if self._stopped:
            raise _Stopped
        job = _Job(self._current, (original, args, kwargs))
        job.needs = [self._compiled[o] for o in objects if o in self._compiled]
        self._blocked.append(job)
        self._start_unblocked()

    # -- running ------------------------------------------------------------------------

    def extension(self, ext: Any) -> None:
        """Let setuptools build *ext*: it decides what to run, the jobs run it."""
        if self._stopped:
            return
        self._current = ext
        try:
            with self._command._filter_build_errors(ext):
                try:
                    self._command.build_extension(ext)
                except _Stopped:
                    pass
        finally:
            self._current = None

    def finish(self) -> None:
        """Wait for every job; raise the first failure of a required extension, and warn
        of optional ones that failed (as setuptools does)."""
        self._drain()
        for job in self._jobs:
            if job.error is not None and not _optional(job.ext):
                raise job.error
        failures: dict[int, tuple[Any, BaseException]] = {}
        for job in self._jobs:
            if job.error is not None:
                failures.setdefault(id(job.ext), (job.ext, job.error))
        for ext, error in failures.values():
            with self._command._filter_build_errors(ext):
                raise error

    def close(self) -> None:
        """Wait for running jobs (a compiler is never left running outside the pool),
        give the pool back, and put the compilers' methods back."""
        try:
            if self._jobserver is not None:
                self._jobserver.close()
        finally:
            if self._pool is not None:
                self._pool.close()
            for compiler, name, value in reversed(self._saved):
                if value is _MISSING:
                    delattr(compiler, name)
                else:
                    setattr(compiler, name, value)

    def _drain(self) -> None:
        """Run everything started or waiting to the end (nothing new once stopped)."""
        while self._blocked and not self._stopped:
            for need in self._blocked[0].needs:
                self._wait(need)
            try:
                self._start_unblocked()
            except _Stopped:
                break
        while self._running:
            self._wait(self._running[0])

    def _start_unblocked(self) -> None:
        """Start the link/archive steps whose compiles are done; drop those that failed."""
        for job in list(self._blocked):
            if self._stopped:
                return
            if any(need.error is not None for need in job.needs):
                self._blocked.remove(job)  # its extension failed already
            elif all(need.finished for need in job.needs):
                self._blocked.remove(job)
                self._start(job)

    def _start(self, job: _Job) -> None:
        jobserver = self._jobserver or self._open()
        job.future = jobserver.submit(_captured, (job.call,), sleep_fn=self._admit)
        self._jobs.append(job)
        self._running.append(job)
        job.future.when_done(self._finished, job)

    def _admit(self) -> None:
        """Admission of every job: Jobserver asks again each time it looked for a slot
        in vain, after completing the jobs that finished meanwhile, so no job starts
        once a required extension has failed."""
        if self._stopped:
            raise _Stopped

    def _wait(self, job: _Job) -> None:
        if job.future is not None:
            job.future.wait()  # runs _finished

    def _finished(self, job: _Job) -> None:
        """Callback of every job, once it is done and its slot is back."""
        assert job.future is not None
        job.finished = True
        self._running.remove(job)
        job.error = job.future.exception()
        # A failed optional extension's other jobs still run: killing a job would
        # leave its compiler running outside the pool.
        if job.error is not None and not _optional(job.ext):
            self._stopped = True

    def _open(self) -> Jobserver:
        from .jobserver import Jobserver

        self._pool = _pool(self._command.parallel)
        # fork: a job calls the compiler object of this very process, unpickled.
        self._jobserver = Jobserver("fork", pool=self._pool)
        return self._jobserver


class _Stopped(Exception):
    """A required extension failed: the build starts nothing more (never escapes)."""


_MISSING = object()


def _optional(ext: Any) -> bool:
    return bool(getattr(ext, "optional", False))


def _nth(args: tuple[Any, ...], index: int) -> Any:
    return args[index] if len(args) > index else None


def _pool(parallel: Any) -> TokenPool:
    """The pool to build on: -j N's own, the advertised one, else one of the usable CPUs."""
    from . import usable_cpus
    from .pool import TokenPool

    if parallel:
        return TokenPool.create(usable_cpus() if parallel is True else int(parallel))
    try:
        pool = TokenPool.from_environ()
    except JobserverUnavailable as e:
        warnings.warn(f"{e}{_FALLBACK_HINT}", JobserverUnavailable, stacklevel=2)
        return TokenPool.create(1)
    return pool if pool is not None else TokenPool.create(usable_cpus())


def _up_to_date(target: str, inputs: list[Any]) -> bool:
    """True when *target* exists and no input is newer (a missing input never is)."""
    try:
        built = os.stat(target).st_mtime_ns
    except OSError:
        return False
    for path in inputs:
        try:
            if os.stat(path).st_mtime_ns > built:
                return False
        except OSError:
            return False
    return True


def _captured(call: tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]) -> Any:
    """In a job: make the call with stdout and stderr held in files, written out whole at
    the end, so that jobs running at once never interleave their lines."""
    fn, args, kwargs = call
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        streams = ((sys.stdout, 1, out), (sys.stderr, 2, err))
        saved = []
        for stream, fd, file in streams:
            if stream is not None:
                stream.flush()
            saved.append(os.dup(fd))
            os.dup2(file.fileno(), fd)
        try:
            return fn(*args, **kwargs)
        finally:
            for (stream, fd, file), original in zip(streams, saved):
                if stream is not None:
                    stream.flush()
                os.dup2(original, fd)
                os.close(original)
                file.seek(0)
                data = file.read()
                while data:
                    data = data[os.write(fd, data) :]
