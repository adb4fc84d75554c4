"""Known label errors of a dataset: slices whose masks are wrong, left out by default.

The list shipped with the package (``errata.json``) holds the errors of the Kaggle set
"Finding and Measuring Lungs in CT Data" confirmed by a person; a user may pass their own
file of the same form: a JSON list of ``{"slice": NAME, "problem": ..., "confirmed": ...}``
(``dataset`` optional). Leaving a slice out on that ground is data cleaning, not choosing a
test set by score: the commands say what they left out and why.
"""

import json
import os

from lungseg_jax.data.slices import Slices

BUILTIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "errata.json")
REQUIRED_FIELDS = ("slice", "problem", "confirmed")


def errata_file(spec: str) -> str | None:
    """The errata file a flag or config value names: ``"builtin"`` the shipped list,
    ``"none"`` (or empty) no list, anything else a path."""
    return {"builtin": BUILTIN, "none": None, "": None}.get(spec, spec)


def load_errata(path: str | None = BUILTIN) -> dict:
    """``{slice name: entry}`` of an errata file (``BUILTIN`` by default; None or "": none).

    Raises ValueError naming the file and entry that is malformed."""
    if not path:
        return {}
    try:
        with open(path) as f:
            entries = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"errata file {path}: cannot read it as JSON: {e}") from e
    if not isinstance(entries, list):
        raise ValueError(f"errata file {path}: expected a JSON list of entries")
    for i, entry in enumerate(entries):
        missing = [k for k in REQUIRED_FIELDS if not isinstance(entry, dict) or k not in entry]
        if missing:
            raise ValueError(f"errata file {path}: entry {i} lacks {', '.join(missing)}")
    return {entry["slice"]: entry for entry in entries}


def leave_out(names, errata: dict) -> tuple[list, list]:
    """(kept names, left-out names) of ``names``: the listed slices left out, order kept."""
    left_out = [n for n in names if n in errata]
    return [n for n in names if n not in errata], left_out


def without_errata(slices: Slices, errata: dict) -> tuple[Slices, list]:
    """``slices`` without the listed ones, and the names left out."""
    kept, left_out = leave_out(slices.names, errata)
    keep = set(kept)
    return slices.subset([i for i, n in enumerate(slices.names) if n in keep]), left_out


def describe(left_out: list, errata: dict) -> str:
    """One line for the log and the report: how many were left out, which, and why."""
    if not left_out:
        return "no slice left out as a known label error"
    reasons = "; ".join(f"{n}: {errata[n]['problem']} ({errata[n]['confirmed']})"
                        for n in left_out)
    return f"{len(left_out)} slice(s) left out as known label errors: {reasons}"
