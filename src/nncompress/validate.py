"""Input validation shared by every layer: clear `ValueError`s naming the field, the value and the
allowed range (never `assert` on user input), plus "did you mean" suggestions for unknown names."""
from __future__ import annotations

import difflib
import math
from collections.abc import Iterable


class UserError(ValueError):
    """Bad input from the user (a value, a name, a file): the CLI prints the message and exits 2.
    Any other exception is a bug and keeps its traceback."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ' Did you mean 'x'?' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else ""


def unknown_name_error(kind: str, name: str, choices: Iterable[str]) -> UserError:
    """A ValueError for an unknown registry name listing the valid ones."""
    choices = sorted(choices)
    return UserError(f"unknown {kind} {name!r}.{did_you_mean(name, choices)} Valid: {', '.join(choices)}")


def check_fraction(field: str, value: float, *, allow_one: bool = False) -> float:
    """Check `0 <= value < 1` (or `<= 1` with allow_one); return it as float."""
    upper_ok = value <= 1 if allow_one else value < 1
    if not isinstance(value, (int, float)) or math.isnan(value) or not (0 <= value and upper_ok):
        rng = "[0, 1]" if allow_one else "[0, 1)"
        raise UserError(f"{field}={value!r} is outside the allowed range {rng}")
    return float(value)


def check_int_range(field: str, value: int, low: int, high: int) -> int:
    """Check that `value` is an int with `low <= value <= high`."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise UserError(f"{field}={value!r} must be an integer in [{low}, {high}]")
    return value


def check_positive(field: str, value: float) -> float:
    """Check that `value` is a finite number > 0."""
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise UserError(f"{field}={value!r} must be a finite number > 0")
    return value


def check_choice(field: str, value: str, choices: Iterable[str]) -> str:
    """Check that `value` is one of `choices`, suggesting the closest on a typo."""
    choices = list(choices)
    if value not in choices:
        raise UserError(f"{field}={value!r} is not one of {choices}.{did_you_mean(str(value), choices)}")
    return value
