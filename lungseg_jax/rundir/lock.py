"""One trainer per workdir: ``WORKDIR/lock``, held by a training run from start to end.

Two trainers writing one workdir race orbax over the same checkpoint steps and interleave
``metrics.jsonl``. The lock file records its holder (process id, host name, start time) and
is created with ``O_CREAT | O_EXCL``, so of two trainers starting together exactly one gets
it. A lock whose holder is gone (a killed trainer never releases it) is stale: a trainer
on the same host finds that process id dead, warns and takes the lock over. A holder on
another host cannot be checked, so it counts as alive.

Only local (or mounted) workdirs are locked: ``etils.epath`` has no create-if-absent for an
object store (``gs://``), so there nothing stops a second trainer. Several processes of one
run lock on process 0 only (``hold_for_run``), and all of them stop when it is refused.
"""

import contextlib
import datetime
import json
import os
import socket

import jax
import numpy as np
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from lungseg_jax.core.files import is_local
from lungseg_jax.rundir import records

LOCK_NAME = "lock"


class WorkdirLocked(FileExistsError):
    """Another live trainer holds the workdir (its lock file exists)."""


@contextlib.contextmanager
def hold_for_run(workdir: epath.PathLike):
    """``hold`` on process 0 for a run of one or more processes. Every process learns whether
    process 0 got the lock, so a refusal stops them all at once (the others would otherwise
    wait for process 0 in the run's first collective until the cluster times out)."""
    is_chief = jax.process_index() == 0
    with contextlib.ExitStack() as stack:
        refusal = None
        if is_chief:
            try:
                stack.enter_context(hold(workdir))
            except Exception as error:  # pylint: disable=broad-except  (re-raised below)
                refusal = error
        if jax.process_count() > 1:
            refused = multihost_utils.broadcast_one_to_all(np.int32(refusal is not None))
            if refused and not is_chief:
                raise WorkdirLocked(f"process 0 could not take the lock of {workdir} (its log "
                                    "says why); this process stops too")
        if refusal is not None:
            raise refusal
        yield


@contextlib.contextmanager
def hold(workdir: epath.PathLike):
    """Holds ``WORKDIR/lock`` (creating the workdir) for the ``with`` block, released also on
    errors; raises ``WorkdirLocked`` naming the holder when a live trainer has it. Does
    nothing for a workdir that is not local."""
    if not is_local(workdir):
        logging.info("%s is not a local folder: it is not locked against a second trainer.",
                     workdir)
        yield
        return
    records.require_folder(workdir)
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, LOCK_NAME)
    mine = acquire(path)
    try:
        yield
    finally:
        release(path, mine)


def acquire(path: str) -> str:
    """Creates the lock file ``path``, taking over a stale one; returns what it wrote."""
    since = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    mine = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": since})
    if create_exclusive(path, mine):
        return mine
    remove_if_stale(path)
    if not create_exclusive(path, mine):  # another trainer took the stale lock first
        raise WorkdirLocked(describe_holder(path))
    return mine


def create_exclusive(path: str, text: str) -> bool:
    """Writes ``text`` to a new file ``path``; False (nothing written) if it exists."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
        f.flush()
        os.fsync(f.fileno())
    return True


def read_holder(path: str) -> dict | None:
    """The lock file's record; {} when unreadable (cut short), None when it is gone."""
    try:
        with open(path) as f:
            holder = json.loads(f.read())
    except FileNotFoundError:
        return None
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def is_alive(holder: dict) -> bool:
    """Whether the holder may still run: its process exists, or it cannot be checked (another
    host, an unreadable lock file)."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return True
    try:
        os.kill(holder["pid"], 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def remove_if_stale(path: str) -> None:
    """Removes the lock file ``path`` if its holder is dead; raises ``WorkdirLocked`` if not."""
    holder = read_holder(path)
    if holder is None:  # released meanwhile
        return
    if is_alive(holder):
        raise WorkdirLocked(describe_holder(path, holder))
    logging.warning("Taking over the stale lock %s: pid %s on %s (since %s) is no longer "
                    "running.", path, holder["pid"], holder["host"], holder.get("since", "?"))
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def describe_holder(path: str, holder: dict | None = None) -> str:
    """One line: who holds the workdir, and the file to delete if that is wrong."""
    holder = read_holder(path) if holder is None else holder
    who = (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} since "
           f"{holder.get('since', '?')}" if holder else "an unknown process (unreadable lock)")
    return (f"{os.path.dirname(path)} is in use by another trainer ({who}); if that process "
            f"is gone, delete {path} and re-run")


def release(path: str, mine: str) -> None:
    """Removes the lock file ``path`` if it is still the one this process wrote (``mine``)."""
    try:
        with open(path) as f:
            current = f.read().strip()
    except FileNotFoundError:
        current = None
    if current != mine:
        logging.warning("The lock %s was replaced or removed by another process; left as it "
                        "is.", path)
        return
    os.remove(path)
