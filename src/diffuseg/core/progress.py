"""Progress for every long command: a rich bar on a terminal, timestamped lines otherwise.

::

    with Progress("predict", total=len(cases), unit="case") as bar:
        for case in cases:
            ...
            bar.advance(info=case)

On a terminal (stderr is a TTY) a rich progress bar shows the count, elapsed time and ETA. When
stderr is not a terminal (CI logs, ``nohup``, pipes) a line is printed every ``interval`` seconds
(10 s; a heartbeat thread keeps printing while one unit takes minutes), and at the end when any
line was printed before (a short, quiet success stays quiet; a failure adds no line before its
``error:``), in this format::

    [2026-11-30 12:00:10] predict 3/10 case (30%) elapsed 0:00:12 eta 0:00:28 | case_003

``set_quiet(True)`` (the CLI's ``--quiet``) silences every bar and line. The ETA is the smaller of
the remaining count at the measured rate and the remaining ``budget_s`` when one binds (training
under ``--minutes``). With ``timer`` (training: the budget's elapsed seconds, on the wall or the
CPU clock, ``train.budget_clock``) the elapsed time, the rate and the budget are read on that
clock; lines are still paced by the wall clock.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Annotated, TextIO, TypeVar

import typer

T = TypeVar("T")
_QUIET = False

Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Print no progress bars or lines")]


def set_quiet(value: bool) -> None:
    global _QUIET
    _QUIET = bool(value)


def is_quiet() -> bool:
    return _QUIET


def clock_text(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def log(line: str, stream: TextIO | None = None) -> None:
    """One timestamped line on stderr, unless quiet."""
    if not _QUIET:
        print(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {line}", file=stream or sys.stderr,
              flush=True)


class Progress:
    """A progress display over ``total`` units (None: unknown total, no ETA)."""

    def __init__(self, label: str, total: int | None = None, *, unit: str = "", start: int = 0,
                 budget_s: float | None = None, interval: float = 10.0,
                 stream: TextIO | None = None, tty: bool | None = None,
                 clock: Callable[[], float] = time.monotonic, heartbeat: bool = True,
                 timer: Callable[[], float] | None = None):
        self.label, self.total, self.unit = label, total, unit
        self.start, self.completed, self.budget_s = start, start, budget_s
        self.interval, self.clock, self.timer = interval, clock, timer
        self.timer0 = timer() if timer is not None else None
        self.stream = stream or sys.stderr
        self.info = ""
        self.t0 = clock()
        self.last_line = self.t0
        self.printed = False
        self.enabled = not _QUIET
        tty = self.stream.isatty() if tty is None else tty
        self.rich = None
        self._stop: threading.Event | None = None
        if self.enabled and tty:
            self._start_rich()
        elif self.enabled:
            if heartbeat:  # a line every interval even while one unit takes minutes
                self._stop = threading.Event()
                threading.Thread(target=self._beat, daemon=True).start()

    # -- timing -------------------------------------------------------------------------------
    def elapsed(self) -> float:
        """Seconds since the start, or with ``timer`` its reading (the budget's total)."""
        return self.timer() if self.timer is not None else self.clock() - self.t0

    def eta(self) -> float | None:
        """Seconds left: the remaining count at the rate so far, capped by the budget left."""
        elapsed, done = self.elapsed(), self.completed - self.start
        spent = elapsed - self.timer0 if self.timer0 is not None else elapsed
        by_count = None
        if self.total is not None and done > 0:
            by_count = (self.total - self.completed) * spent / done
        by_budget = None if self.budget_s is None else max(0.0, self.budget_s - elapsed)
        options = [v for v in (by_count, by_budget) if v is not None]
        return min(options) if options else None

    def text(self) -> str:
        count = f"{self.completed}" if self.total is None else f"{self.completed}/{self.total}"
        unit = f" {self.unit}" if self.unit else ""
        pct = f" ({100 * self.completed / self.total:.0f}%)" if self.total else ""
        info = f" | {self.info}" if self.info else ""
        return (f"{self.label} {count}{unit}{pct} elapsed {clock_text(self.elapsed())} "
                f"eta {clock_text(self.eta())}{info}")

    # -- updates ------------------------------------------------------------------------------
    def advance(self, n: int = 1, info: str | None = None) -> None:
        self.update(self.completed + n, info)

    def update(self, completed: int, info: str | None = None) -> None:
        self.completed = completed
        if info is not None:
            self.info = info
        if not self.enabled:
            return
        if self.rich is not None:
            self.rich.update(self.task, completed=completed, info=self.info,
                             eta=clock_text(self.eta()), elapsed=clock_text(self.elapsed()))
        elif self.clock() - self.last_line >= self.interval:
            self._line()

    def close(self, failed: bool = False) -> None:
        if not self.enabled:
            return
        if self.rich is not None:
            self.rich.stop()
        else:
            if self._stop is not None:
                self._stop.set()
            if self.printed and not failed:
                self._line()
        self.enabled = False

    def _beat(self) -> None:
        while not self._stop.wait(min(1.0, self.interval)):
            if self.enabled and self.clock() - self.last_line >= self.interval:
                self._line()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind, *exc) -> None:
        self.close(failed=kind is not None)

    def _line(self) -> None:
        self.last_line, self.printed = self.clock(), True
        print(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {self.text()}", file=self.stream,
              flush=True)

    def _start_rich(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as RichProgress

        elapsed = (TimeElapsedColumn() if self.timer is None
                   else TextColumn("{task.fields[elapsed]}"))
        self.rich = RichProgress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn(self.unit), elapsed, TextColumn("eta {task.fields[eta]}"),
            TextColumn("{task.fields[info]}"), console=Console(file=self.stream),
            transient=False)
        self.task = self.rich.add_task(self.label, total=self.total, completed=self.start,
                                       info="", eta="?", elapsed=clock_text(self.elapsed()))
        self.rich.start()


def track(items: Iterable[T], label: str, *, total: int | None = None, unit: str = "",
          name: Callable[[T], str] | None = None, **kwargs) -> Iterator[T]:
    """Iterate ``items`` with a progress display; ``name(item)`` is shown after each one."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(label, total, unit=unit, **kwargs) as bar:
        for item in items:
            yield item
            bar.advance(info=name(item) if name else None)
