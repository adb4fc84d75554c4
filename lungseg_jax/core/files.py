"""Paths that may be local or an object-store URI (``gs://``), and atomic writes to them."""

import contextlib
import errno
import os
import pathlib

from etils import epath


def is_local(path: epath.PathLike) -> bool:
    """Whether ``path`` is on a local (or mounted) filesystem, not a ``gs://``-style URI."""
    return "://" not in os.fspath(path)


def absolute(path: epath.PathLike) -> epath.Path:
    """``path`` as an ``epath.Path``: local paths made absolute, URIs as they are."""
    return epath.Path(os.path.abspath(path) if is_local(path) else path)


def write_atomic(path: epath.PathLike, text: str) -> None:
    """Replaces ``path`` by ``text`` all at once: a local file through ``write_file_atomic``
    (a synced temporary file renamed over it); an object (``gs://``) in one upload, which
    the store makes atomic (it has no atomic rename)."""
    if not is_local(path):
        epath.Path(path).write_text(text)
        return
    write_file_atomic(path, lambda tmp: pathlib.Path(tmp).write_text(text))


def prepare_file_path(path: epath.PathLike) -> None:
    """Makes sure a file can be written at ``path`` before the work that produces it:
    refuses an existing folder there (IsADirectoryError) and creates the folder it goes in
    (FileExistsError/NotADirectoryError when a file is in the way)."""
    path = absolute(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; expected a file path such as "
                                f"{path / 'result.json'}")
    path.parent.mkdir(parents=True, exist_ok=True)


def write_file_atomic(path: epath.PathLike, write, *, replace: bool = True,
                      suffix: str = "") -> None:
    """``write(tmp)`` writes a temporary file beside the local ``path``, which is synced and
    renamed onto ``path`` in one step: a crash leaves ``path`` as it was, never half-written,
    and no temporary file (its name, ``.NAME.PID.tmpSUFFIX``, is no user's file).
    ``suffix`` ends the temporary name (for writers that pick the format by the name, such as
    ``.nii.gz``). With ``replace=False`` an existing ``path`` (even one made while ``write``
    ran) is kept and FileExistsError raised: the file is linked into place, which fails if
    the name exists, or where the file system has no links checked just before renaming."""
    folder, base = os.path.split(os.fspath(path))
    tmp = os.path.join(folder, f".{base}.{os.getpid()}.tmp{suffix}")
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.replace(tmp, path)
            return
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise FileExistsError(errno.EEXIST, "file exists", os.fspath(path)) from None
        except OSError:  # no hard links on this file system (FAT, some network mounts)
            if os.path.lexists(path):
                raise FileExistsError(errno.EEXIST, "file exists", os.fspath(path)) from None
            os.replace(tmp, path)
    finally:  # also after a link: the temporary name goes either way
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
