"""The one-line progress display: drawn only on terminals, and by the training loop."""

import io
import re

from lungseg_jax import progress, trainer


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


def test_training_draws_the_last_step_of_each_call(tiny_config, tmp_path, monkeypatch):
    out = Terminal()
    real = progress.Progress

    def on_terminal(*args, **kwargs):
        return real(*args, **{**kwargs, "stream": out, "interval": 0.0, "enabled": True})

    monkeypatch.setattr(progress, "Progress", on_terminal)
    tiny_config.steps_per_call = 3  # 4 steps per epoch: calls of 3 and 1 steps
    trainer.train_and_evaluate(tiny_config, str(tmp_path))
    drawn = re.findall(r"step (\d+)/8 \[[#.]+\] loss (\d+\.\d+)", out.getvalue())
    assert [int(step) for step, _ in drawn] == [3, 4, 7, 8]
    assert all(float(loss) > 0 for _, loss in drawn)
