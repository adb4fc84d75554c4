"""A one-line progress display (steps, loss, speed, ETA) for interactive terminals only.

Drawn with rich (a declared dependency) below the log: while the bar is shown, log lines
(absl's handler, any logger's ``logging.StreamHandler`` on stderr, and whatever is written
to ``sys.stderr``) go through rich's console, which prints them above the bar instead of
through it. Off a terminal (a pipe, a file, CI) nothing is drawn and nothing is redirected.

The speed and ETA count only the steps after the first drawn call: the first call of a
run includes compiling it, so timing it would promise hours for a minute's run. Until a
second call has been timed, neither is shown.
"""

import logging
import sys
import time

from absl import logging as absl_logging
from rich import progress as rich_progress
from rich.console import Console

BAR_WIDTH = 30


def format_seconds(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Rate:
    """Steps per second between the first observation and the latest one.

    The first observation is taken after the first call has finished, so its compilation
    (and any one-off start-up) is left out of the rate; ``per_second`` and ``eta`` are None
    until a later observation, some steps and some time further, has been made.
    """

    def __init__(self):
        self.first = self.latest = None  # (step, time)

    def observe(self, step: int, now: float) -> None:
        if self.first is None:
            self.first = (step, now)
        self.latest = (step, now)

    def per_second(self) -> float | None:
        if self.first is None:
            return None
        (first_step, first_time), (step, now) = self.first, self.latest
        if step <= first_step or now <= first_time:
            return None
        return (step - first_step) / (now - first_time)

    def eta(self, total: int) -> float | None:
        """Seconds until step ``total`` at the measured rate (None while unknown)."""
        rate = self.per_second()
        return None if rate is None else (total - self.latest[0]) / rate


def stats_text(rate: Rate, total: int, images_per_step: int, loss: float | None) -> str:
    """``loss 0.1234  56.7 img/s  ETA 0:01:02``, each part only when known."""
    parts = [] if loss is None else [f"loss {loss:.4f}"]
    per_second, eta = rate.per_second(), rate.eta(total)
    if per_second is not None:
        parts += [f"{per_second * images_per_step:.1f} img/s", f"ETA {format_seconds(eta)}"]
    return "  ".join(parts)


def _stream_handlers():
    """The ``logging.StreamHandler``s of every logger (absl's on the root, and those that
    libraries such as MLflow attach to their own loggers)."""
    loggers = [logging.getLogger(), *(logger for logger in
                                      list(logging.Logger.manager.loggerDict.values())
                                      if isinstance(logger, logging.Logger))]
    for logger in loggers:
        for handler in logger.handlers:
            if isinstance(handler, absl_logging.ABSLHandler):
                handler = handler.python_handler
            if isinstance(handler, logging.StreamHandler):
                yield handler


class Progress:
    """Redraws ``step N/TOTAL [bar] loss  img/s  ETA`` on the last line of ``stream``.

    Silent when ``stream`` (default: stderr) is not a terminal, so logs and CI stay clean,
    and redrawn at most every ``interval`` seconds (always after the first call, and at
    step ``total``) so it costs almost nothing. ``start``: the step the command starts at
    (a resumed run's); a drawn step lies after it and not past ``total`` (ValueError
    otherwise: a caller's mistake). ``clock`` is for tests.
    """

    def __init__(self, total: int, start: int, images_per_step: int, stream=None,
                 interval: float = 0.5, enabled: bool | None = None, clock=time.monotonic,
                 width: int | None = None):
        if not 0 <= start <= total:
            raise ValueError(f"start step {start} outside [0, {total}]")
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.total, self.start, self.images_per_step = total, start, images_per_step
        self.interval, self.clock, self.width = interval, clock, width
        self.rate = Rate()
        self.last_draw = clock()
        self._display = None  # rich's Progress and its task, made at the first draw
        self._redirected = []  # (handler, its own stream) while the bar is shown

    def due(self, step: int | None = None) -> bool:
        """True when a redraw is due (callers fetch the loss only then): the first one,
        one at step ``total``, or ``interval`` seconds after the last."""
        if not self.enabled:
            return False
        return (self.rate.first is None or step == self.total
                or self.clock() - self.last_draw >= self.interval)

    def draw(self, step: int, loss: float | None = None) -> None:
        if not self.start < step <= self.total:
            raise ValueError(f"step {step} outside ({self.start}, {self.total}]")
        if not self.enabled:
            return
        now = self.clock()
        self.last_draw = now
        self.rate.observe(step, now)
        stats = stats_text(self.rate, self.total, self.images_per_step, loss)
        if self._display is None:
            self._show(step, stats)
        else:
            progress, task = self._display
            progress.update(task, completed=step, stats=stats)
            progress.refresh()

    def _show(self, step: int, stats: str) -> None:
        """Starts rich's live display at ``step`` and sends the log through it."""
        # soft_wrap: a long log line is left to the terminal to wrap, not cut into lines.
        console = Console(file=self.stream, force_terminal=True, width=self.width,
                          highlight=False, soft_wrap=True)
        progress = rich_progress.Progress(
            rich_progress.TextColumn("step {task.completed}/{task.total}"),
            rich_progress.BarColumn(bar_width=BAR_WIDTH),
            rich_progress.TextColumn("{task.fields[stats]}"),
            console=console, auto_refresh=False, redirect_stderr=True,
            redirect_stdout=sys.stdout.isatty())
        task = progress.add_task("", total=self.total, completed=step, stats=stats)
        progress.start()  # sys.stderr is now rich's proxy, which prints above the bar
        for handler in _stream_handlers():
            if handler.stream is self.stream:
                self._redirected.append((handler, handler.stream))
                handler.setStream(sys.stderr)
        self._display = (progress, task)

    def close(self) -> None:
        """Leaves the last drawn line in place and gives the log its stream back."""
        if self._display is None:
            return
        for handler, stream in self._redirected:
            handler.setStream(stream)
        self._redirected = []
        self._display[0].stop()
        self._display = None
