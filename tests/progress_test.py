"""The one-line progress display: drawn only on terminals, and by the training loop."""

import io
import re

from lungseg_jax.core import progress
from lungseg_jax.training.loop import train_and_evaluate


REAL_PROGRESS = progress.Progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_format_seconds():
    assert progress.format_seconds(3725.9) == "1:02:05"
    assert progress.format_seconds(-4) == "0:00:00"


def test_draws_step_bar_loss_speed_and_eta_on_a_terminal():
    out = Terminal()
    bar = progress.Progress(total=10, start=0, images_per_step=4, stream=out, interval=0.0)
    assert bar.due()
    bar.draw(5, loss=0.25)
    bar.close()
    text = out.getvalue()
    assert text.startswith("\rstep 5/10 [" + "#" * 15 + "." * 15 + "] loss 0.2500  ")
    assert re.search(r"[\d.]+ img/s  ETA \d+:\d\d:\d\d $", text.strip("\r\n"))
    assert text.endswith("\n")


def test_silent_off_a_terminal():
    out = io.StringIO()
    bar = progress.Progress(total=10, start=0, images_per_step=4, stream=out, interval=0.0)
    assert not bar.due()
    bar.close()
    assert out.getvalue() == ""


def drawn_losses(config, workdir, monkeypatch) -> dict:
    """{step: loss} as the progress display drew them during a run, on a terminal."""
    out = Terminal()

    def on_terminal(*args, **kwargs):
        return REAL_PROGRESS(*args, **{**kwargs, "stream": out, "interval": 0.0, "enabled": True})

    monkeypatch.setattr(progress, "Progress", on_terminal)
    train_and_evaluate(config, workdir)
    return {int(step): loss for step, loss in
            re.findall(r"step (\d+)/8 \[[#.]+\] loss (\d+\.\d+)", out.getvalue())}


def test_training_draws_the_last_step_of_each_call(tiny_config, tmp_path, monkeypatch):
    tiny_config.steps_per_call = 1
    every_step = drawn_losses(tiny_config, str(tmp_path / "one"), monkeypatch)
    assert sorted(every_step) == list(range(1, 9))
    tiny_config.steps_per_call = 3  # 4 steps per epoch: calls of 3 and 1 steps
    per_call = drawn_losses(tiny_config, str(tmp_path / "three"), monkeypatch)
    assert per_call == {step: every_step[step] for step in (3, 4, 7, 8)}
