"""core.files' atomic writes: ``write_atomic`` (text) writes a local file the way
``write_file_atomic`` writes any file."""

import os

import pytest

from lungseg_jax.core import files


def test_write_atomic_leaves_a_users_tmp_file_alone(tmp_path):
    """The temporary file is write_file_atomic's hidden one, not ``PATH.tmp``, which may be
    a file of the user's (or of another writer of the same path)."""
    (tmp_path / "o.json.tmp").write_text("the user's")
    files.write_atomic(tmp_path / "o.json", "new")
    assert (tmp_path / "o.json").read_text() == "new"
    assert (tmp_path / "o.json.tmp").read_text() == "the user's"
    assert sorted(os.listdir(tmp_path)) == ["o.json", "o.json.tmp"]


def test_write_atomic_writes_through_write_file_atomic(tmp_path, monkeypatch):
    calls = []
    real = files.write_file_atomic
    monkeypatch.setattr(files, "write_file_atomic",
                        lambda path, write, **kw: calls.append(path) or real(path, write, **kw))
    files.write_atomic(tmp_path / "a.txt", "text")
    assert calls == [tmp_path / "a.txt"] and (tmp_path / "a.txt").read_text() == "text"


def test_an_interrupted_write_leaves_the_old_file_and_no_temporary_one(tmp_path, monkeypatch):
    (tmp_path / "o.json").write_text("old")

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        files.write_atomic(tmp_path / "o.json", "new")
    assert os.listdir(tmp_path) == ["o.json"] and (tmp_path / "o.json").read_text() == "old"
