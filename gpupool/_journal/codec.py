"""Canonical JSON for the journal: task keys derived from items, and results.

A journal outlives the process that wrote it, so everything it stores must
mean the same thing to the next process: no ``hash()`` (salted per process),
no ``repr()`` (changes between versions), no pickle (a journal file must not
be able to run code when it is read). What remains is a small, strict subset
of JSON:

* ``None``, ``bool``, ``int``, finite ``float``, ``str``;
* ``list`` and ``tuple`` (both stored as a JSON array, so ``(1, 2)`` and
  ``[1, 2]`` are the same item and a tuple comes back as a list);
* ``dict`` whose keys are all ``str`` (stored with sorted keys, so insertion
  order does not change a key).

Anything else (numpy scalars, dataclasses, ``Path``, ``int`` dict keys, NaN)
is refused with an error that names the offending value's place, rather than
being coerced silently into something that could collide with another item.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Callable
from typing import Any

from .._core.errors import JournalEncodingError

__all__ = [
    "canonical_json",
    "check_key",
    "decode_json",
    "function_name",
    "task_key",
]

#: Longest key a user may give; keys are shown in tables and file names.
MAX_KEY_LENGTH = 512


def _as_json_types(value: object, where: str) -> Any:
    """Return ``value`` as plain JSON types, or raise naming where it went wrong."""
    # bool before int: bool is an int subclass but JSON keeps them apart.
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise JournalEncodingError(
                f"{where} is {value!r}; only finite floats can be stored as JSON"
            )
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_as_json_types(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise JournalEncodingError(
                    f"{where} has a dict key {k!r} of type {type(k).__name__}; "
                    "only str dict keys can be stored as JSON"
                )
            out[str(k)] = _as_json_types(v, f"{where}[{k!r}]")
        return out
    raise JournalEncodingError(
        f"{where} is a {type(value).__module__}.{type(value).__qualname__}, which has no "
        "canonical JSON form; allowed: None, bool, int, finite float, str, list, tuple, "
        "dict with str keys"
    )


def canonical_json(value: object, *, what: str = "value") -> str:
    """Encode ``value`` as compact JSON with sorted keys.

    Equal plain values give equal strings in every process and every run.
    Raises `JournalEncodingError` (a ``TypeError``) naming the part of
    ``value`` that is not one of the allowed types; ``what`` names the whole
    value in that message ("item", "result of task 'k'").
    """
    as_json = _as_json_types(value, what)
    return json.dumps(as_json, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def decode_json(text: str) -> Any:
    """Decode JSON written by `canonical_json`."""
    return json.loads(text)


def function_name(fn: Callable[..., Any]) -> str:
    """The module-qualified name that identifies ``fn`` across runs.

    ``functools.partial`` objects are named after the function they wrap (their
    bound arguments go into the key separately, see `task_key`). Lambdas are
    refused: every lambda of a module has the same name, so two different
    lambdas mapped over the same items would share keys and the second would
    silently get the first one's results.
    """
    while isinstance(fn, functools.partial):
        fn = fn.func
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if not isinstance(qualname, str) or not isinstance(module, str):
        raise JournalEncodingError(
            f"cannot name {fn!r} for a task key (it has no __module__/__qualname__); "
            "pass key= to give each task its own key"
        )
    if "<lambda>" in qualname:
        raise JournalEncodingError(
            f"cannot derive task keys from a lambda ({module}.{qualname}): all lambdas "
            "of a module share one name; use a named function or pass key="
        )
    return f"{module}.{qualname}"


def task_key(fn: Callable[..., Any], item: object) -> str:
    """The default key of the task ``fn(item, ...)``: stable across processes.

    ``"<function qualname>:<24 hex digits>"``, the digits being a SHA-256 over
    the canonical JSON of the function's name, any ``functools.partial``
    arguments and the item. Raises `JournalEncodingError` when the item (or a
    partial's arguments) has no canonical form; the message asks for ``key=``.
    """
    name = function_name(fn)
    bound: list[Any] = []
    inner: Any = fn
    while isinstance(inner, functools.partial):
        bound.append([list(inner.args), dict(inner.keywords)])
        inner = inner.func
    try:
        payload = canonical_json({"fn": name, "partial": bound, "item": item}, what="item")
    except JournalEncodingError as exc:
        raise JournalEncodingError(
            f"cannot derive a task key for {name}: {exc}; pass key= (a function of the "
            "item returning a str) to name tasks yourself"
        ) from None
    digest = hashlib.sha256(payload.encode("utf-8")).hexdigest()[:24]
    short = name.rsplit(".", 1)[-1]
    return f"{short}:{digest}"


def check_key(key: object) -> str:
    """Validate a user-given task key and return it."""
    if not isinstance(key, str):
        raise TypeError(f"a task key must be a str, got {type(key).__name__} {key!r}")
    if not key or len(key) > MAX_KEY_LENGTH:
        raise ValueError(
            f"a task key must be a non-empty str of at most {MAX_KEY_LENGTH} characters, "
            f"got {key!r:.80}"
        )
    return key
