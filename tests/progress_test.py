"""The progress display: drawn only on terminals, below the log, with an ETA that leaves the
first (compiling) call out; and drawn by the training loop."""

import io
import logging
import re

import pytest
from absl import logging as absl_logging

from lungseg_jax.core import progress
from lungseg_jax.training.loop import train_and_evaluate


REAL_PROGRESS = progress.Progress
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Terminal(io.StringIO):
    def isatty(self):
        return True


class FakeClock:
    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now


def frames(text: str) -> list:
    """The lines drawn on a terminal, colours and cursor moves removed, in order."""
    return [line for line in re.split(r"[\r\n]", ANSI.sub("", text)) if line.strip()]


def test_format_seconds():
    assert progress.format_seconds(3725.9) == "1:02:05"
    assert progress.format_seconds(-4) == "0:00:00"


def test_rate_and_eta_leave_the_first_call_out():
    rate = progress.Rate()
    assert rate.per_second() is None and rate.eta(118) is None
    # The first call (8 steps) took 90 s, compiling included: not a rate.
    rate.observe(8, 1090.0)
    assert rate.per_second() is None and rate.eta(118) is None
    # 10 steps in the next 5 s: 2 steps/s, so the 100 steps left take 50 s.
    rate.observe(18, 1095.0)
    assert rate.per_second() == 2.0 and rate.eta(118) == 50.0
    # 30 more steps in 20 s: 40 steps in 25 s since the first call, 78 left at 1.6 steps/s.
    rate.observe(48, 1115.0)
    assert rate.per_second() == 1.6 and rate.eta(126) == 48.75
    # A resumed run starts counting at its first call, not at step 0.
    resumed = progress.Rate()
    resumed.observe(60, 5.0)
    resumed.observe(70, 9.0)
    assert resumed.eta(100) == 12.0


def test_draws_step_bar_loss_and_no_eta_until_known():
    out, clock = Terminal(), FakeClock()
    bar = REAL_PROGRESS(total=118, start=0, images_per_step=4, stream=out, interval=0.5,
                        clock=clock, width=120)
    assert bar.due()  # the first call is always drawn (it starts the rate)
    clock.now += 90.0  # the first call: compiling and 8 steps
    bar.draw(8, loss=0.25)
    step, count, drawn_bar, *stats = frames(out.getvalue())[-1].split()
    assert (step, count, stats) == ("step", "8/118", ["loss", "0.2500"])  # no speed, no ETA
    assert len(drawn_bar) == progress.BAR_WIDTH
    clock.now += 0.2
    assert not bar.due() and bar.due(118)  # within the interval, unless the last step
    clock.now += 4.8
    assert bar.due()
    bar.draw(18, loss=0.125)
    # 10 steps in 5 s: 8 img/s at 4 images a step; 100 steps left: 50 s.
    assert frames(out.getvalue())[-1].endswith("loss 0.1250  8.0 img/s  ETA 0:00:50")
    bar.close()  # the line stays, the cursor moves below it
    assert ANSI.sub("", out.getvalue()).endswith("ETA 0:00:50\n")


def test_silent_off_a_terminal():
    out = io.StringIO()
    bar = REAL_PROGRESS(total=10, start=0, images_per_step=4, stream=out, interval=0.0)
    assert not bar.due() and not bar.due(10)
    bar.draw(5, loss=0.25)
    bar.close()
    assert out.getvalue() == ""


def test_log_lines_are_printed_above_the_bar_not_through_it():
    out = Terminal()
    plain = logging.StreamHandler(out)
    absl_handler = absl_logging.ABSLHandler(absl_logging.PythonFormatter())
    absl_handler.python_handler.setStream(out)
    absl_handler.setFormatter(logging.Formatter("absl %(message)s"))
    library = logging.getLogger("a_library")  # one with its own handler, as MLflow's
    own = logging.StreamHandler(out)
    own.setFormatter(logging.Formatter("library %(message)s"))
    library.addHandler(own)
    library.propagate = False
    root = logging.getLogger()
    root.addHandler(plain)
    root.addHandler(absl_handler)
    try:
        bar = REAL_PROGRESS(total=10, start=0, images_per_step=1, stream=out, interval=0.0,
                            width=80)
        bar.draw(3, loss=0.5)
        library.warning("its line")
        logging.warning("a log line")
        bar.draw(6, loss=0.25)
        bar.close()
        # Given back after the bar: the handlers write to the terminal itself again.
        assert plain.stream is out and absl_handler.python_handler.stream is out
        assert own.stream is out
    finally:
        root.removeHandler(plain)
        root.removeHandler(absl_handler)
        library.removeHandler(own)
    lines = frames(out.getvalue())
    # Each handler's line whole, on a line of its own, and the bar drawn again below them.
    assert "library its line" in lines
    assert "a log line" in lines and "absl a log line" in lines
    assert lines[-1].startswith("step 6/10 ")
    after_log = lines[lines.index("absl a log line") + 1:]
    assert after_log and all(line.startswith("step ") for line in after_log)


def drawn_losses(config, workdir, monkeypatch, interval=0.0) -> dict:
    """{step: loss} as the progress display drew them during a run, on a terminal whose
    clock stands still: ``interval`` 0 draws after every call, a large one only the draws
    that are always made (the first call's, and the last step's)."""
    out = Terminal()

    def on_terminal(*args, **kwargs):
        return REAL_PROGRESS(*args, **{**kwargs, "stream": out, "interval": interval,
                                       "enabled": True, "width": 100, "clock": FakeClock()})

    monkeypatch.setattr(progress, "Progress", on_terminal)
    train_and_evaluate(config, workdir)
    return {int(step): float(loss) for step, loss in
            re.findall(r"step (\d+)/8 \S+ loss (\d+\.\d+)", "\n".join(frames(out.getvalue())))}


def test_training_draws_the_last_step_of_each_call(tiny_config, tmp_path, monkeypatch):
    tiny_config.steps_per_call = 1
    every_step = drawn_losses(tiny_config, str(tmp_path / "one"), monkeypatch)
    assert sorted(every_step) == list(range(1, 9))
    tiny_config.steps_per_call = 3  # 4 steps per epoch: calls of 3 and 1 steps
    per_call = drawn_losses(tiny_config, str(tmp_path / "three"), monkeypatch)
    assert per_call == {step: every_step[step] for step in (3, 4, 7, 8)}
    # No redraw ever due by time: still the first call's and the last step's.
    seldom = drawn_losses(tiny_config, str(tmp_path / "seldom"), monkeypatch, interval=1e9)
    assert seldom == {step: every_step[step] for step in (3, 8)}


def test_steps_are_drawn_from_after_the_start_to_the_total():
    bar = REAL_PROGRESS(total=10, start=4, images_per_step=1, stream=io.StringIO())
    for step in (4, 11):  # nothing done yet, or past the end: a caller's mistake
        with pytest.raises(ValueError, match=rf"^step {step} outside \(4, 10\]$"):
            bar.draw(step)
    bar.draw(5)
    bar.draw(10)
    with pytest.raises(ValueError, match=r"^start step 11 outside \[0, 10\]$"):
        REAL_PROGRESS(total=10, start=11, images_per_step=1)
