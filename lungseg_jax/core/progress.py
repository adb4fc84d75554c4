"""A one-line progress display (steps, loss, speed, ETA) for interactive terminals only."""

import sys
import time


def format_seconds(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Redraws ``step/total [bar] loss  img/s  ETA`` on one line of ``stream``.

    Silent when ``stream`` is not a terminal (logs and CI stay clean), and draws
    at most every ``interval`` seconds so it costs almost nothing.
    """

    def __init__(self, total: int, start: int, images_per_step: int, stream=None,
                 interval: float = 0.5, enabled: bool | None = None):
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.total, self.start, self.images_per_step = total, start, images_per_step
        self.interval = interval
        self.started = self.last_draw = time.monotonic()

    def due(self) -> bool:
        """True when a redraw is due (callers fetch the loss only then)."""
        return self.enabled and time.monotonic() - self.last_draw >= self.interval

    def draw(self, step: int, loss: float | None = None) -> None:
        now = time.monotonic()
        self.last_draw = now
        done = step - self.start
        rate = done / max(now - self.started, 1e-9)
        eta = (self.total - step) / rate if rate > 0 else 0.0
        filled = int(30 * step / max(self.total, 1))
        loss_text = "" if loss is None else f"loss {loss:.4f}  "
        self.stream.write(f"\rstep {step}/{self.total} [{'#' * filled}{'.' * (30 - filled)}] "
                          f"{loss_text}{rate * self.images_per_step:.1f} img/s  "
                          f"ETA {format_seconds(eta)} ")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
