"""The argument checks every layer shares, so one argument has one rule everywhere.

The rule is attrs': a wrong type is a ``TypeError``, a wrong value a
``ValueError``, and the message names the argument, what was given and what
is allowed. Arguments are typed ``object`` on purpose: the checks are for
callers whose types were not checked.
"""

from __future__ import annotations

import decimal
import inspect
import math
import sys
from collections.abc import Callable, Collection
from typing import Any, TypeGuard, TypeVar

import attrs

__all__ = [
    "check_bool",
    "check_callable",
    "check_choice",
    "check_finite_seconds",
    "check_instance",
    "check_int",
    "check_number",
    "check_seconds",
    "check_str",
    "int_validator",
    "is_async_callable",
    "is_int",
    "is_number",
    "number_validator",
    "shown",
]

T = TypeVar("T")


#: An error message shows at most this much of a value's repr.
_SHOWN_CHARS = 80


def shown(value: object) -> str:
    """``repr(value)`` for an error message, kept short.

    An int too large for a float is shown in scientific notation (its repr may
    run to thousands of digits, or be refused by Python's digit limit), and
    any other repr is cut at 80 characters.
    """
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > sys.float_info.max:
        return f"{format(decimal.Decimal(value), '.3e')} (an int too large for a float)"
    text = repr(value)
    if len(text) > _SHOWN_CHARS:
        text = text[: _SHOWN_CHARS - 3] + "..."
    return text


def _bounds(minimum: float | None, maximum: float | None) -> str:
    if minimum is not None and maximum is not None:
        return f" in [{minimum}, {maximum}]"
    if minimum is not None:
        return f" >= {minimum}"
    if maximum is not None:
        return f" <= {maximum}"
    return ""


def is_int(value: object) -> TypeGuard[int]:
    """An int and not a bool: ``True`` is an int to Python, never a count to gpupool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> TypeGuard[int | float]:
    """An int or a float and not a bool (finite or not: see :func:`check_number`)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_int(
    name: str, value: object, minimum: int | None = None, maximum: int | None = None
) -> int:
    """``value`` as an int (never a bool) within the bounds given.

    ``TypeError`` for anything but an int, ``ValueError`` for an int out of
    bounds; either message names the argument, the value and what is allowed.
    """
    if isinstance(value, bool) or not isinstance(value, int):  # is_int, inlined: hot
        raise TypeError(f"{name} must be an int{_bounds(minimum, maximum)}, got {shown(value)}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be an int{_bounds(minimum, maximum)}, got {shown(value)}")
    return value


def _as_float(name: str, value: object, allowed: str) -> float:
    """``value`` (an int or a float, never a bool) as a float; else say it must be ``allowed``.

    ``float()`` of an int beyond the float range raises a bare ``OverflowError``;
    here it is a ``ValueError`` naming the argument like any other bad value.
    """
    if type(value) is float:
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):  # is_number, inlined
        raise TypeError(f"{name} must be {allowed}, got {shown(value)}")
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"{name} must be {allowed}, got {shown(value)}") from None


def check_number(
    name: str, value: object, *, minimum: float | None = None, maximum: float | None = None
) -> float:
    """``value`` as a finite float within the bounds given (ints are welcome).

    ``TypeError`` for a non-number (bools included), ``ValueError`` for NaN,
    an infinity, an int too large for a float, or a value out of bounds.
    """
    return _number(name, value, minimum, maximum, f"a finite number{_bounds(minimum, maximum)}")


def _number(
    name: str, value: object, minimum: float | None, maximum: float | None, allowed: str
) -> float:
    number = _as_float(name, value, allowed)
    if (
        not math.isfinite(number)
        or (minimum is not None and number < minimum)
        or (maximum is not None and number > maximum)
    ):
        raise ValueError(f"{name} must be {allowed}, got {shown(value)}")
    return number


def check_seconds(
    name: str, value: object, *, allow_zero: bool = True, allow_inf: bool = True
) -> float | None:
    """An optional limit in seconds: ``None`` for no limit, else a float.

    ``None`` means no limit; so does ``math.inf`` (returned as ``None``)
    unless ``allow_inf`` is false. Zero is allowed unless ``allow_zero`` is
    false: for a timeout it means a deadline of now (docs/pool.md, "Arguments
    and errors"). ``TypeError`` for a non-number, ``ValueError`` for NaN, a
    negative number or an int too large for a float.
    """
    if value is None:
        return None
    bound = ">= 0" if allow_zero else "> 0"
    allowed = f"None or {'a' if allow_inf else 'a finite'} number of seconds {bound}"
    seconds = _as_float(name, value, allowed)
    if (
        math.isnan(seconds)
        or seconds < 0
        or (seconds == 0 and not allow_zero)
        or (math.isinf(seconds) and not allow_inf)
    ):
        raise ValueError(f"{name} must be {allowed}, got {shown(value)}")
    return None if math.isinf(seconds) else seconds


def check_finite_seconds(name: str, value: object, *, allow_zero: bool = True) -> float:
    """A duration that must be given: a finite number of seconds (``> 0`` without ``allow_zero``)."""
    bound = ">= 0" if allow_zero else "> 0"
    allowed = f"a finite number of seconds {bound}"
    seconds = _as_float(name, value, allowed)
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        raise ValueError(f"{name} must be {allowed}, got {shown(value)}")
    return seconds


def check_bool(name: str, value: object, *, allowed: str = "True or False") -> bool:
    """``value`` if it is ``True`` or ``False`` (not 1, not "yes"); else ``TypeError``."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be {allowed}, got {shown(value)}")
    return value


def check_str(name: str, value: object, *, allowed: str = "a str") -> str:
    """``value`` if it is a str; else ``TypeError`` saying it must be ``allowed``."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be {allowed}, got {shown(value)}")
    return value


def check_instance(
    name: str, value: object, kind: type[T] | tuple[type[T], ...], allowed: str
) -> T:
    """``value`` if it is an instance of ``kind``; else ``TypeError`` saying it must be
    ``allowed`` (say "... or None" and check ``None`` first where it is welcome)."""
    if not isinstance(value, kind):
        raise TypeError(f"{name} must be {allowed}, got {shown(value)}")
    return value


def check_choice(name: str, value: object, choices: Collection[str]) -> str:
    """``value`` if it is one of the strings ``choices``: ``TypeError`` for a
    non-str, ``ValueError`` for another str; the message lists the choices."""
    quoted = [repr(choice) for choice in choices]
    allowed = " or ".join(quoted) if len(quoted) <= 2 else f"one of {', '.join(quoted)}"
    if not isinstance(value, str):
        raise TypeError(f"{name} must be {allowed}, got {shown(value)}")
    if value not in choices:
        raise ValueError(f"{name} must be {allowed}, got {shown(value)}")
    return value


def check_callable(name: str, value: object, *, allowed: str = "callable") -> Callable[..., Any]:
    """``value`` if it can be called; else ``TypeError`` saying it must be ``allowed``."""
    if not callable(value):
        raise TypeError(f"{name} must be {allowed}, got {shown(value)}")
    return value


# -- the same checks as attrs validators --------------------------------------------------
# For fields of attrs classes: the field's name is the argument's name in the message.


def int_validator(
    minimum: int | None = None, maximum: int | None = None
) -> Callable[[object, attrs.Attribute[Any], object], None]:
    """An attrs validator that applies :func:`check_int` to the field."""

    def validate(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        check_int(attribute.name, value, minimum, maximum)

    return validate


def number_validator(
    *, minimum: float | None = None, maximum: float | None = None, optional: bool = False
) -> Callable[[object, attrs.Attribute[Any], object], None]:
    """An attrs validator that applies :func:`check_number` to the field (``None`` is
    welcome too with ``optional``)."""

    allowed = f"{'None or ' if optional else ''}a finite number{_bounds(minimum, maximum)}"

    def validate(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value is None and optional:
            return
        _number(attribute.name, value, minimum, maximum, allowed)

    return validate


def is_async_callable(fn: object) -> bool:
    """True for an ``async def`` function, a partial of one, or an object with an async
    ``__call__``: calling it gives a coroutine, not a result."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - an object with an async __call__
    )
