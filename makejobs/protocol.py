"""Sans-IO codec for the GNU make jobserver words of ``MAKEFLAGS``.

This module only turns strings into typed values and back; it never opens,
checks or inherits file descriptors (that is the pool layer's job).

Why this module is long: it is the whole of a format that make, cargo and
ninja each read differently, with make's escaping, its option table, every
historical spelling of the jobserver word and the diagnostics a person needs
when one is wrong; split up, each part would need all the others.

The format
==========

GNU make hands the jobserver to its children in the ``MAKEFLAGS`` environment
variable, built by ``define_makeflags`` in ``mirror/make:src/main.c``::

    ks -j4 -l8 -Otarget --jobserver-auth=fifo:/tmp/GMfifo123 -- VAR=a\\ b

* The first word holds the single-letter flags *without* a dash (``ks``,
  ``n``, ``w``...).  With no such flags the value starts with a space
  (``" -j4 --jobserver-auth=..."``).
* Then ``-jN`` (make >= 4.2; make <= 4.1 and cargo write a bare ``-j``), other
  options, and the jobserver word ``--jobserver-auth=AUTH``.
* Then, if there are command-line variable overrides, a ``--`` word and the
  overrides.  Nothing after ``--`` is an option, even if it looks like one.
* Blanks (space, tab) and backslashes inside a word are escaped with a
  backslash (``quote_for_env``).  Make's reader (``decode_env_switches``)
  skips leading white space, splits on runs of blanks, reads ``\\x`` as a
  literal ``x`` and keeps a final lone backslash as it is.  It then prepends
  a ``-`` to the first word when that word has neither a leading ``-`` nor an
  ``=``, so a hand-written ``MAKEFLAGS=kj4`` means ``-k -j4``.  The words are
  parsed with ``getopt_long``, so ``-j 4``, ``--jobs 4`` and
  ``--jobserver-auth PATH`` (separate argument) work as well.

``AUTH`` is one of (manual, "Job Slots" / "POSIX Jobserver" / "Windows
Jobserver"; ``mirror/make:src/posixos.c``, ``src/w32/w32os.c``):

* ``R,W``: two inherited pipe file descriptors (every make since the
  jobserver exists; the read end is ``O_NONBLOCK`` since make 4.3).
* ``fifo:PATH``: a named pipe (make >= 4.4, its default where ``mkfifo``
  works).  Make <= 4.3 dies on it with ``internal error: invalid
  --jobserver-auth string``.
* negative descriptors, in practice ``-2,-2``: the jobserver is disabled for
  this child.  Make >= 4.4 appends it for children that are not marked
  recursive (``+``) in pipe mode; make 4.3 instead leaves the stale ``R,W``.
* anything else: on Windows a semaphore name such as
  ``gmake_semaphore_1234``; for this POSIX library it is "a jobserver we
  cannot use".

Make <= 4.1 spelled the word ``--jobserver-fds=R,W``; make 4.2 renamed it to
``--jobserver-auth`` and keeps the old name as an alias writing the same
variable, so the *textually last* of either word wins (the manual: "Only the
last instance is relevant"; observed with make 4.3 and 4.4.1).  jobserver-rs
differs slightly (it prefers any ``--jobserver-auth`` over ``--jobserver-fds``);
this module follows make.  ``--jobserver-fds`` is never re-exported by make.

cargo (jobserver-rs) and ninja split ``MAKEFLAGS`` on spaces without
unescaping, so a fifo under a ``TMPDIR`` with a space defeats them; this
module unescapes like make does.

What this module chooses where make is silent or fatal
======================================================

* Any string parses; bad input ends up in :attr:`MakeFlags.problems` instead
  of an exception.  A NUL ends the value (what a C program would see).
* An empty auth value (``--jobserver-auth=``) is kept as
  ``unsupported=""`` plus a problem: make 4.3 ignores the word with an error,
  make 4.4.1 aborts; either way the advertised jobserver is not usable.
* A fifo path containing a newline or NUL is not accepted as a
  :class:`FifoAuth` (it becomes ``unsupported`` plus a problem), because
  :func:`format_makeflags` refuses to export it: a newline inside an
  environment variable breaks line-oriented tools and shells.
* Descriptors must fit a C ``int``; larger ones are ``unsupported`` plus a
  problem.  The same bound applies to ``-j``.
* Long option abbreviations (``--jobserver-a=3,4``, accepted by
  ``getopt_long``) are not recognised; neither make nor any peer writes them.
* Unknown long options are ignored silently (make keeps adding new ones);
  unknown single-letter options are ignored with a problem note.
"""

from __future__ import annotations

import re

# Not typing's TYPE_CHECKING (see makejobs/__init__.py): names for annotations only.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "FifoAuth",
    "MakeFlags",
    "PipeAuth",
    "describe_unsupported_auth",
    "escape_word",
    "format_makeflags",
    "make_jobs_option",
    "parse_makeflags",
    "replace_auth",
    "split_words",
    "unlimited_jobs",
]

_AUTH = "--jobserver-auth"
_FDS = "--jobserver-fds"

# File descriptors and -j values are C ints in make.
_INT_LIMIT = 2**31

# make's ISBLANK: the only characters that separate words.
_BLANKS = " \t"
# make's ISSPACE (NEXT_TOKEN): skipped before the first word only.
_SPACES = " \t\n\v\f\r"
# Characters escape_word protects: blanks and backslash like make's
# quote_for_env, plus the other white space so that a word survives even in
# first position (make's decoder reads "\x" as "x" for any x).
_ESCAPED = frozenset(" \t\\\n\v\f\r")

# make's single-letter options without an argument (flag, flag_off, ignore in
# the switches table of mirror/make:src/main.c).  Only these may appear in
# MakeFlags.letters.
_FLAG_LETTERS = frozenset("bBdehikLmnpqrRsStvw")
# Options whose argument may only be attached (-l8, -Otarget) or, for -j,
# be a separate all-digits word.
_OPTIONAL_ARG_LETTERS = frozenset("jlO")
# Options that take the rest of the word or else the whole next word.
_REQUIRED_ARG_LETTERS = frozenset("CEfIoW")

# Long spellings of the single-letter flags (including make's aliases): make
# re-exports them as letters (``--dry-run`` becomes ``n``), so they feed
# MakeFlags.letters too.
_LONG_FLAGS: dict[str, str] = {
    "always-make": "B",
    "environment-overrides": "e",
    "help": "h",
    "ignore-errors": "i",
    "keep-going": "k",
    "check-symlink-times": "L",
    "just-print": "n",
    "dry-run": "n",
    "recon": "n",
    "print-data-base": "p",
    "question": "q",
    "no-builtin-rules": "r",
    "no-builtin-variables": "R",
    "silent": "s",
    "quiet": "s",
    "no-keep-going": "S",
    "stop": "S",
    "touch": "t",
    "version": "v",
    "print-directory": "w",
}
# Long options with a required argument: without "=" they swallow the next
# word whatever it is (even "--" or an auth word), exactly like getopt_long.
_LONG_REQUIRED = frozenset(
    {
        "assume-new",
        "assume-old",
        "directory",
        "eval",
        "file",
        "include-dir",
        "jobserver-style",
        "makefile",
        "new-file",
        "old-file",
        "sync-mutex",
        "temp-stdin",
        "what-if",
    }
)

_PIPE_RE = re.compile(r"(-?)([0-9]+),(-?)([0-9]+)")
_DIGITS_RE = re.compile(r"[0-9]+")
_NEGATIVE_RE = re.compile(r"-[0-9]+")


def _check_fd(name: str, fd: object) -> int:
    if isinstance(fd, bool) or not isinstance(fd, int):
        raise TypeError(f"{name} must be an int, not {type(fd).__name__}")
    if not 0 <= fd < _INT_LIMIT:
        raise ValueError(f"{name} must be in [0, 2**31), got {fd}")
    return fd


def _check_exportable(what: str, text: str) -> None:
    # NUL cannot live in an environment variable; a newline is refused on
    # purpose (see the module docstring).
    if "\0" in text:
        raise ValueError(f"{what} contains a NUL character: {text!r}")
    if "\n" in text:
        raise ValueError(f"{what} contains a newline: {text!r}")


class _Value:
    """Base of the immutable value types below: equality, hash and repr by field.

    Hand-written rather than ``@dataclass(frozen=True)``: this module is on
    the start-up path of every ``makejobs`` command, and the dataclasses
    machinery (with :mod:`inspect` behind it) would cost more to import than
    the whole of makejobs' command-line parsing.
    """

    __slots__ = ()
    #: The fields in their order (repr, pickling); each class's ``__slots__`` too.
    _FIELDS: tuple[str, ...] = ()

    def _fields(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self._FIELDS)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, _Value)
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._fields()))

    def __repr__(self) -> str:
        args = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._FIELDS)
        return f"{type(self).__name__}({args})"

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable: cannot delete {name!r}")

    def _init(self, **fields: object) -> None:
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (type(self), self._fields())


class PipeAuth(_Value):
    """A pipe jobserver: ``--jobserver-auth=R,W``.

    Both descriptors are ints in ``[0, 2**31)`` (checked on construction:
    ``TypeError`` / ``ValueError``).  They are numbers as written in
    ``MAKEFLAGS``; nothing here says they are open or are a pipe.
    Instances are immutable, hashable and compare by value.
    """

    _FIELDS = __slots__ = ("read_fd", "write_fd")
    read_fd: int
    write_fd: int

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self._init(read_fd=_check_fd("read_fd", read_fd), write_fd=_check_fd("write_fd", write_fd))


class FifoAuth(_Value):
    """A named-pipe jobserver (make >= 4.4): ``--jobserver-auth=fifo:PATH``.

    ``path`` is the unescaped path, non-empty and free of NUL and newline
    (checked on construction: ``TypeError`` / ``ValueError``), so every
    ``FifoAuth`` can be exported by :func:`format_makeflags`.
    Instances are immutable, hashable and compare by value.
    """

    _FIELDS = __slots__ = ("path",)
    path: str

    def __init__(self, path: str) -> None:
        if not isinstance(path, str):
            raise TypeError(f"path must be a str, not {type(path).__name__}")
        if not path:
            raise ValueError("fifo path is empty")
        _check_exportable("fifo path", path)
        self._init(path=path)


class MakeFlags(_Value):
    """What a ``MAKEFLAGS`` value says about the jobserver.

    At most one of ``auth``, ``disabled`` and ``unsupported`` is set:

    * ``auth``: a usable-looking pool description (nothing is checked here).
    * ``disabled``: the last auth word had a negative descriptor (``-2,-2``);
      the parent deliberately withheld the pool.
    * ``unsupported``: the raw (unescaped) auth text we cannot use, e.g. a
      Windows semaphore name or garbage.

    ``letters`` are make's single-letter flags in the order seen (the first
    word, other dash clusters such as ``-k``, and long spellings such as
    ``--dry-run``); ``dry_run`` is ``"n" in letters``.  ``jobs`` is the last
    ``-j`` value (``None`` for a bare ``-j``, for no ``-j`` or for a bad
    value); it is informative only and must not be used to size a pool.
    ``source`` names the option of the winning auth word (``"--jobserver-auth"``
    or ``"--jobserver-fds"``), ``None`` when no pool is advertised.
    ``problems`` describes ignored or unusable input, in order.
    Instances are immutable, hashable and compare by value.
    """

    _FIELDS = __slots__ = (
        "auth",
        "disabled",
        "unsupported",
        "dry_run",
        "jobs",
        "letters",
        "source",
        "problems",
    )
    auth: PipeAuth | FifoAuth | None
    disabled: bool
    unsupported: str | None
    dry_run: bool
    jobs: int | None
    letters: str
    source: str | None
    problems: tuple[str, ...]

    def __init__(
        self,
        auth: PipeAuth | FifoAuth | None = None,
        disabled: bool = False,
        unsupported: str | None = None,
        dry_run: bool = False,
        jobs: int | None = None,
        letters: str = "",
        source: str | None = None,
        problems: tuple[str, ...] = (),
    ) -> None:
        self._init(
            auth=auth,
            disabled=disabled,
            unsupported=unsupported,
            dry_run=dry_run,
            jobs=jobs,
            letters=letters,
            source=source,
            problems=problems,
        )

    def advertises_pool(self) -> bool:
        """True if an auth word was present (usable, disabled or unsupported)."""
        return self.auth is not None or self.disabled or self.unsupported is not None


# --------------------------------------------------------------------------
# Words


class _Word:
    __slots__ = ("dangling", "raw", "text")

    def __init__(self, text: str, raw: str, dangling: bool) -> None:
        self.text = text  # unescaped, as make's getopt sees it
        self.raw = raw  # exactly as written in the value
        self.dangling = dangling  # raw ends with a lone final backslash (kept literally)


def _scan(value: str) -> list[_Word]:
    """Split like make's ``decode_env_switches``, keeping the raw spelling."""
    words: list[_Word] = []
    n = len(value)
    i = 0
    while i < n and value[i] in _SPACES:
        i += 1
    start = i
    chars: list[str] = []
    dangling = False
    while i < n:
        c = value[i]
        if c == "\\":
            if i + 1 < n:
                chars.append(value[i + 1])
                i += 2
                continue
            dangling = True  # make keeps a final lone backslash as it is
        elif c in _BLANKS:
            words.append(_Word("".join(chars), value[start:i], False))
            chars = []
            while i < n and value[i] in _BLANKS:
                i += 1
            start = i
            continue
        chars.append(c)
        i += 1
    if chars:
        words.append(_Word("".join(chars), value[start:], dangling))
    return words


def split_words(value: str) -> list[str]:
    """Split a ``MAKEFLAGS`` value into unescaped words, like make does.

    Leading white space is skipped, words are separated by runs of blanks
    (space, tab), ``\\x`` stands for ``x`` and a final lone backslash is kept.
    No empty words are returned (make would add an empty last word after
    trailing blanks; it carries no meaning).  A NUL is an ordinary character
    here; :func:`parse_makeflags` cuts the value at a NUL first.
    """
    return [word.text for word in _scan(value)]


def escape_word(word: str) -> str:
    """Escape one word for ``MAKEFLAGS`` the way make's ``quote_for_env`` does.

    Blanks and backslashes get a backslash; so do the other white-space
    characters (newline, CR, VT, FF), which make would otherwise skip at the
    very start of the value.  For any list of non-empty words ``ws``,
    ``split_words(" ".join(map(escape_word, ws))) == ws``.  ``$`` is not
    doubled: that doubling exists only inside make and is gone in the
    environment.
    """
    return "".join("\\" + c if c in _ESCAPED else c for c in word)


# --------------------------------------------------------------------------
# Option analysis shared by parse_makeflags and replace_auth


def _classify(
    text: str,
) -> tuple[PipeAuth | FifoAuth | None, bool, str | None, str | None]:
    """Auth text -> (auth, disabled, unsupported, problem)."""
    m = _PIPE_RE.fullmatch(text)
    if m is not None:
        fds = ((m.group(1), m.group(2)), (m.group(3), m.group(4)))
        # "-0" is zero, not negative.
        if any(sign and digits.strip("0") for sign, digits in fds):
            return None, True, None, None
        values = []
        for _sign, digits in fds:
            significant = digits.lstrip("0")
            # Length check first: int() of a huge digit string is slow or
            # refused (sys.set_int_max_str_digits).
            if len(significant) > 10 or int(significant or "0") >= _INT_LIMIT:
                return None, False, text, f"jobserver file descriptor too large in {text!r}"
            values.append(int(significant or "0"))
        return PipeAuth(values[0], values[1]), False, None, None
    if text.startswith("fifo:"):
        try:
            return FifoAuth(text[len("fifo:") :]), False, None, None
        except ValueError as exc:
            return None, False, text, f"unusable jobserver fifo in {text!r}: {exc}"
    if not text:
        return None, False, text, "empty jobserver auth value (make rejects it)"
    if "\n" in text or "\0" in text:
        # Keeps "a clean parse can be exported again" true.
        return None, False, text, f"jobserver auth {text!r} contains a newline or NUL"
    return None, False, text, None


def _parse_jobs(value: str) -> tuple[int | None, str | None]:
    """-j argument -> (jobs, problem); make wants a positive C int."""
    if _DIGITS_RE.fullmatch(value):
        significant = value.lstrip("0")
        if not significant:
            return None, f"ignored -j value {value!r}: zero is not a positive integer"
        if len(significant) > 10 or int(significant) >= _INT_LIMIT:
            return None, f"ignored -j value {value!r}: too large"
        return int(significant), None
    if _NEGATIVE_RE.fullmatch(value):
        return None, f"ignored -j value {value!r}: negative"
    return None, f"ignored -j value {value!r}: not a positive integer"


def _all_digits(text: str) -> bool:
    return _DIGITS_RE.fullmatch(text) is not None


class _Analysis:
    """The result of one getopt-like pass over the words before ``--``."""

    def __init__(self) -> None:
        self.auth: PipeAuth | FifoAuth | None = None
        self.disabled = False
        self.unsupported: str | None = None
        self.source: str | None = None
        self.jobs: int | None = None
        self.bare_jobs = False  # the last -j had no number
        self.letters: list[str] = []
        self.problems: list[str] = []
        # Word indices, for replace_auth.
        self.auth_words: set[int] = set()  # auth options and their arguments
        self.jobs_words: set[int] = set()  # whole -j words and their arguments
        self.trim: dict[int, int] = {}  # cluster "-kj4": keep text[:cut]
        self.end: int | None = None  # the "--" word
        self.missing: int | None = None  # last word: option lacking its argument

    def set_auth(self, source: str, text: str) -> None:
        # A later auth word replaces all earlier auth state.
        self.auth, self.disabled, self.unsupported, problem = _classify(text)
        self.source = source
        if problem is not None:
            self.problems.append(problem)

    def set_jobs(self, value: str | None) -> None:
        self.bare_jobs = value is None
        if value is None:
            self.jobs = None  # bare -j: no limit
            return
        self.jobs, problem = _parse_jobs(value)
        if problem is not None:
            self.problems.append(problem)

    def lacks_argument(self, index: int, option: str) -> None:
        self.missing = index
        self.problems.append(f"option {option} lacks its argument; ignored")


def _long_option(a: _Analysis, words: list[_Word], i: int, body: str) -> int:
    """Handle ``--body``; return the index of the last word it consumed."""
    name, eq, arg = body.partition("=")
    option = "--" + name
    if name in ("jobserver-auth", "jobserver-fds"):
        a.auth_words.add(i)
        if eq:
            a.set_auth(option, arg)
        elif i + 1 < len(words):
            i += 1
            a.auth_words.add(i)
            a.set_auth(option, words[i].text)
        else:
            a.lacks_argument(i, option)
    elif name == "jobs":
        a.jobs_words.add(i)
        if eq:
            a.set_jobs(arg)
        elif i + 1 < len(words) and _all_digits(words[i + 1].text):
            # make's positive_int peeks at an all-digits next word.
            i += 1
            a.jobs_words.add(i)
            a.set_jobs(words[i].text)
        else:
            a.set_jobs(None)
    elif name in _LONG_FLAGS:
        if eq:
            a.problems.append(f"option {option} takes no argument; ignored")
        else:
            a.letters.append(_LONG_FLAGS[name])
    elif name in _LONG_REQUIRED and not eq:
        if i + 1 < len(words):
            i += 1
        else:
            a.lacks_argument(i, option)
    # Other long options, known or not, carry nothing we need.
    return i


def _short_options(a: _Analysis, words: list[_Word], i: int, text: str, shift: int) -> int:
    """Handle a cluster ``-abc``; return the index of the last word consumed.

    ``shift`` is 1 when the dash was prepended (dash-less first word), so
    positions in ``text`` are one more than in the word itself.
    """
    k = 1
    while k < len(text):
        c = text[k]
        if c in _FLAG_LETTERS:
            a.letters.append(c)
            k += 1
            continue
        if c == "j":
            if k == 1:
                a.jobs_words.add(i)
            else:
                a.trim[i] = k - shift
            rest = text[k + 1 :]
            if rest:
                a.set_jobs(rest)
            elif i + 1 < len(words) and _all_digits(words[i + 1].text):
                i += 1
                a.jobs_words.add(i)
                a.set_jobs(words[i].text)
            else:
                a.set_jobs(None)
            return i
        if c in _OPTIONAL_ARG_LETTERS:
            return i  # -l / -O: the rest of the word is their argument
        if c in _REQUIRED_ARG_LETTERS:
            if k + 1 < len(text):
                return i
            if i + 1 < len(words):
                return i + 1
            a.lacks_argument(i, "-" + c)
            return i
        a.problems.append(f"unknown option {'-' + c!r} ignored")
        k += 1
    return i


def _analyse(words: list[_Word]) -> _Analysis:
    a = _Analysis()
    i = 0
    while i < len(words):
        text = words[i].text
        shift = 0
        if i == 0 and not text.startswith("-") and "=" not in text:
            # make: a dash-less first word that is no assignment gets a dash.
            text = "-" + text
            shift = 1
        if text == "--":
            a.end = i
            break
        if text.startswith("--"):
            i = _long_option(a, words, i, text[2:])
        elif len(text) > 1 and text[0] == "-":
            i = _short_options(a, words, i, text, shift)
        # Anything else is a non-option: a variable assignment, a plain "-"
        # or junk.  It is not ours to interpret, and scanning goes on after it.
        i += 1
    return a


# --------------------------------------------------------------------------
# Public API


def parse_makeflags(value: str) -> MakeFlags:
    """Decode a ``MAKEFLAGS`` (or ``MFLAGS``/``CARGO_MAKEFLAGS``) value.

    Never raises on any ``str``.  Words are split and unescaped like make
    (:func:`split_words`); options are read like make's ``getopt_long`` up to
    a ``--`` word (variable overrides after it are not looked at).  The
    textually last ``--jobserver-auth``/``--jobserver-fds`` word (``=VALUE``
    or separate-argument form) decides ``auth``/``disabled``/``unsupported``
    and ``source``; the last ``-jN``/``-j N``/``--jobs=N``/``--jobs N``/bare
    ``-j`` decides ``jobs``.  Bad input is reported in ``problems``.
    """
    problems: list[str] = []
    if "\0" in value:
        value = value[: value.index("\0")]
        problems.append("value cut at a NUL character, as a C program would see it")
    a = _analyse(_scan(value))
    letters = "".join(a.letters)
    return MakeFlags(
        auth=a.auth,
        disabled=a.disabled,
        unsupported=a.unsupported,
        dry_run="n" in letters,
        jobs=a.jobs,
        letters=letters,
        source=a.source,
        problems=tuple(problems + a.problems),
    )


def _keep_arguments_apart(out: list[_Item]) -> list[_Item]:
    """Put a plain ``-`` between an option and a number that were not neighbours.

    make reads a number word right after ``-j``/``--jobs``/``-l`` as their
    argument: dropping ``--jobserver-auth=`` from ``-j --jobserver-auth= 3``
    must not turn an unlimited ``-j`` into ``-j 3``. make ignores the ``-``.
    """
    kept: list[_Item] = []
    for item in out:
        if kept:
            prev = kept[-1]
            if (
                # One of the value's own words (ours never lack an argument)...
                prev.origin is not None
                and (prev.text.startswith("-") or prev.origin == 0)
                # ...now followed by a number that did not follow it: the
                # first word never counts, it becomes an option off first place.
                and item.origin != prev.origin + 1
                and item.origin != 0
                and item.text[:1].isdigit()
            ):
                kept.append(_Item("-", "-", False, None))
        kept.append(item)
    return kept


# --------------------------------------------------------------------------
# Diagnosis helpers: what the words mean for a person reading them


def unlimited_jobs(value: str) -> bool:
    """True when the last ``-j`` of a ``MAKEFLAGS`` value has no number.

    A bare ``-j`` (``make -j``) means no limit at all, and make then runs no
    jobserver: :attr:`MakeFlags.jobs` is None for it, as for no ``-j``.
    """
    if "\0" in value:
        value = value[: value.index("\0")]
    return _analyse(_scan(value)).bare_jobs


def make_jobs_option(args: Sequence[str]) -> str | None:
    """The ``-j`` words of a make command line (*args* after the program name), or None.

    Read as make's ``getopt_long`` reads them: ``-j``, ``-j8``, ``-j 8``,
    ``--jobs``, ``--jobs=8``, ``--jobs 8`` and clusters such as ``-kj8``, up
    to a ``--`` word. The words are returned as written, joined by a space.
    A make given any of them on its command line leaves an inherited pool
    ("-jN forced in submake: resetting jobserver mode").
    """
    # A leading "-" word, which make ignores, keeps args[0] from being read
    # as MAKEFLAGS' dash-less first word of letters.
    words = [_Word("-", "-", False)] + [_Word(arg, arg, False) for arg in args]
    a = _analyse(words)
    found = sorted(a.jobs_words | set(a.trim))
    if not found:
        return None
    return " ".join(words[i].raw for i in found)


def _looks_like_a_name(text: str) -> bool:
    """A letter or ``_``, then letters, digits, ``_``, ``.``, ``-`` (an identifier-like name)."""
    rest = text[1:].replace("_", "").replace(".", "").replace("-", "")
    return (text[:1].isascii() and (text[:1].isalpha() or text[:1] == "_")) and (
        not rest or (rest.isascii() and rest.isalnum())
    )


def describe_unsupported_auth(text: str) -> tuple[str, bool]:
    """Why the auth text *text* (``MakeFlags.unsupported``) is no pool here.

    Returns ``(reason, semaphore)``: *reason* says what is wrong with the
    text itself (``fifo path is empty``, ``descriptor too large``...), and
    *semaphore* is True only when the text looks like the name of a Windows
    semaphore (GNU make 4.4 on Windows writes ``gmake_semaphore_1234``), the
    one case where "another platform's jobserver" is the likely story.
    """
    _auth, _disabled, _unsupported, problem = _classify(text)
    if text.startswith("fifo:"):
        return (problem or f"unusable fifo in {text!r}").split(": ", 1)[-1], False
    if problem is not None and "too large" in problem:
        return f"descriptor too large in {text!r} (descriptors are C ints)", False
    if not text:
        return "the value is empty: no pipe ('R,W') or fifo ('fifo:PATH') is named", False
    if _DIGITS_RE.fullmatch(text):
        return f"a single number {text!r}: a pipe jobserver names two descriptors, 'R,W'", False
    if problem is not None:
        return problem, False
    if _looks_like_a_name(text):
        return f"{text!r} is not a pipe ('R,W') or a fifo ('fifo:PATH')", True
    return f"{text!r} is neither a pipe ('R,W') nor a fifo ('fifo:PATH')", False


def _check_jobs(jobs: object) -> int:
    if isinstance(jobs, bool) or not isinstance(jobs, int):
        raise TypeError(f"jobs must be an int or None, not {type(jobs).__name__}")
    if not 1 <= jobs < _INT_LIMIT:
        raise ValueError(f"jobs must be in [1, 2**31), got {jobs}")
    return jobs


def _auth_words(
    auth: PipeAuth | FifoAuth | None, disabled: bool, unsupported: str | None
) -> list[str]:
    """The escaped words that advertise one auth, in makejobs' spelling."""
    if (auth is not None) + bool(disabled) + (unsupported is not None) > 1:
        raise ValueError("at most one of auth, disabled and unsupported may be set")
    if isinstance(auth, PipeAuth):
        pair = f"{_check_fd('read_fd', auth.read_fd)},{_check_fd('write_fd', auth.write_fd)}"
        # Legacy alias first: readers taking the last word of either name see
        # --jobserver-auth, readers knowing only --jobserver-fds still find it.
        return [f"{_FDS}={pair}", f"{_AUTH}={pair}"]
    if isinstance(auth, FifoAuth):
        if not auth.path:
            raise ValueError("fifo path is empty")
        _check_exportable("fifo path", auth.path)
        return [escape_word(f"{_AUTH}=fifo:{auth.path}")]
    if auth is not None:
        raise TypeError(f"auth must be PipeAuth, FifoAuth or None, not {type(auth).__name__}")
    if disabled:
        return [f"{_AUTH}=-2,-2"]
    if unsupported is not None:
        _check_exportable("unsupported auth text", unsupported)
        if _classify(unsupported) != (None, False, unsupported, None):
            raise ValueError(f"unsupported auth text {unsupported!r} would not read back as such")
        return [escape_word(f"{_AUTH}={unsupported}")]
    return []


def format_makeflags(flags: MakeFlags) -> str:
    """Build a make-style ``MAKEFLAGS`` value from ``flags``.

    Layout: ``letters`` as the dash-less first word (with no letters the value
    starts with a space, as make writes it), then `` -jN`` if ``jobs``, then
    the auth: `` --jobserver-fds=R,W --jobserver-auth=R,W`` for a pipe (legacy
    alias first so old and new readers agree), `` --jobserver-auth=fifo:PATH``
    for a fifo, `` --jobserver-auth=-2,-2`` when disabled, or
    `` --jobserver-auth=TEXT`` for unsupported text.  Paths and text are
    escaped with :func:`escape_word`.

    ``source`` and ``problems`` are not emitted.  ``parse_makeflags(
    format_makeflags(x)) == x`` for every valid ``x``: ``problems == ()`` and
    ``source`` is ``"--jobserver-auth"`` if a pool is advertised, else None.

    Raises ``ValueError`` (or ``TypeError`` for wrong types) for flags that
    cannot be written faithfully: letters outside make's no-argument flag
    letters ``bBdehikLmnpqrRsStvw`` (arg-taking letters such as ``j``/``l``/``O``
    would swallow what follows), ``dry_run`` disagreeing with ``"n" in
    letters``, ``jobs`` outside ``[1, 2**31)``, more than one of
    auth/disabled/unsupported, a NUL or newline in a path or text, or
    unsupported text that would read back as something else (``""``,
    ``"3,4"``, ``"fifo:"``...).
    """
    letters = flags.letters
    bad = sorted(set(letters) - _FLAG_LETTERS)
    if bad:
        raise ValueError(f"letters {letters!r} contain non-flag characters {bad!r}")
    if bool(flags.dry_run) != ("n" in letters):
        raise ValueError("dry_run must equal ('n' in letters)")
    words = [letters]
    if flags.jobs is not None:
        words.append(f"-j{_check_jobs(flags.jobs)}")
    words.extend(_auth_words(flags.auth, flags.disabled, flags.unsupported))
    return " ".join(words)


class _Item:
    __slots__ = ("dangling", "origin", "raw", "text")

    def __init__(self, raw: str, text: str, dangling: bool, origin: int | None) -> None:
        self.raw = raw
        self.text = text
        self.dangling = dangling
        self.origin = origin  # original word index, None for inserted words


def replace_auth(
    value: str,
    auth: PipeAuth | FifoAuth | None,
    *,
    jobs: int | None = None,
    disabled: bool = False,
) -> str:
    """Rewrite an existing ``MAKEFLAGS`` value so a child sees our pool.

    Every ``--jobserver-auth``/``--jobserver-fds`` word before ``--`` is
    dropped (with its separate argument, if any); so are ``-j`` words
    (``-jN``, ``-j N``, ``--jobs[=N]``, the ``j`` tail of a cluster such as
    ``kj4`` -> ``k``) when ``jobs`` is given.  Then ours is inserted, spelled
    as :func:`format_makeflags` spells it (`` -jN`` and the auth words;
    ``disabled=True`` gives ``--jobserver-auth=-2,-2``; ``auth=None`` without
    ``disabled`` only strips), just before the ``--`` word if present, else
    at the end.  All other words, including escapes and the overrides after
    ``--``, are kept verbatim; separators become single spaces and the value
    starts with a space iff its first word is an option, like make's.

    Two corner cases of hand-written values are kept meaning-preserving: a
    trailing option lacking its argument (``-f``) stays last, so it cannot
    swallow our words, and when dropping the first word would promote a
    dash-less word into first place (where make would prepend a dash to it),
    our words go first instead (or a plain ``-``, which make ignores).  A
    final lone backslash is doubled when words follow it.

    An empty or blank ``value`` gives the same as ``format_makeflags(
    MakeFlags(auth=auth, disabled=disabled, jobs=jobs))``.  Raises
    ``ValueError`` if ``value`` contains NUL, if both ``auth`` and
    ``disabled`` are given, or for a bad ``jobs``.
    """
    if "\0" in value:
        raise ValueError("MAKEFLAGS value contains a NUL character")
    ours = [f"-j{_check_jobs(jobs)}"] if jobs is not None else []
    ours.extend(_auth_words(auth, disabled, None))
    our_items = [_Item(w, _scan(w)[0].text, False, None) for w in ours]

    words = _scan(value)
    a = _analyse(words)
    drop = set(a.auth_words)
    if jobs is not None:
        drop |= a.jobs_words
    if a.end is not None:
        insert_at = a.end
    elif a.missing is not None:
        insert_at = a.missing
    else:
        insert_at = len(words)

    before: list[_Item] = []
    after: list[_Item] = []
    for i, word in enumerate(words):
        if i in drop:
            continue
        item = _Item(word.raw, word.text, word.dangling, i)
        if jobs is not None and i in a.trim:
            kept = word.text[: a.trim[i]]
            if kept in ("", "-"):
                continue
            item = _Item(escape_word(kept), kept, False, i)
        (before if i < insert_at else after).append(item)

    out = _keep_arguments_apart(before + our_items + after)
    first_survives = any(item.origin == 0 for item in out)
    if out and words and not first_survives:
        head = out[0].text
        if not head.startswith("-") and "=" not in head:
            # make would prepend a dash to this promoted word; put a
            # dash-led word in front so it keeps its old meaning.
            if our_items:
                out = our_items + before + after
            else:
                out = [_Item("-", "-", False, None), *out]

    pieces: list[str] = []
    for pos, item in enumerate(out):
        raw = item.raw
        if item.origin == 0 and pos != 0:
            head = item.text
            if not head.startswith("-") and "=" not in head:
                # The dash make used to prepend must now be explicit.
                raw = "-" + raw
        if item.dangling and pos != len(out) - 1:
            raw += "\\"
        if pos == 0 and raw[0] in _SPACES:
            # make skips white space before the first word; a promoted word
            # such as "\n--x=" must keep its newline (make reads "\\\n" as "\n").
            raw = "\\" + raw
        pieces.append(raw)
    if not pieces:
        return ""
    lead = " " if out[0].text.startswith("-") else ""
    return lead + " ".join(pieces)
