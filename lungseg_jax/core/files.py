"""Paths that may be local or an object-store URI (``gs://``), and atomic writes to them."""

import os

from etils import epath


def is_local(path: epath.PathLike) -> bool:
    """Whether ``path`` is on a local (or mounted) filesystem, not a ``gs://``-style URI."""
    return "://" not in os.fspath(path)


def absolute(path: epath.PathLike) -> epath.Path:
    """``path`` as an ``epath.Path``: local paths made absolute, URIs as they are."""
    return epath.Path(os.path.abspath(path) if is_local(path) else path)


def write_atomic(path: epath.PathLike, text: str) -> None:
    """Replaces ``path`` by ``text`` all at once: a local file through a synced temporary
    file renamed over it; an object (``gs://``) in one upload, which the store makes atomic
    (it has no atomic rename)."""
    if not is_local(path):
        epath.Path(path).write_text(text)
        return
    tmp = f"{os.fspath(path)}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
