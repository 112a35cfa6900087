"""Canonical JSON and task keys: stable across processes, strict about types."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path
from random import Random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpupool import JournalEncodingError
from gpupool._journal.codec import (
    canonical_json,
    check_key,
    decode_json,
    function_name,
    task_key,
)

ROOT = Path(__file__).resolve().parents[1]


def train(item: object, allocation: object) -> None:
    """A stand-in task function."""


def other(item: object, allocation: object) -> None:
    """Another task function."""


def test_canonical_json_sorts_keys_and_is_compact() -> None:
    assert canonical_json({"b": 1, "a": [1, 2.5, None, True, "é"]}) == (
        '{"a":[1,2.5,null,true,"é"],"b":1}'
    )
    assert canonical_json({"a": 1, "b": 2}) == canonical_json({"b": 2, "a": 1})
    assert canonical_json(OrderedDict(b=1, a=2)) == canonical_json({"a": 2, "b": 1})


def test_tuples_and_lists_are_the_same_json() -> None:
    assert canonical_json((1, (2, 3))) == canonical_json([1, [2, 3]]) == "[1,[2,3]]"


def test_bool_int_and_float_stay_distinct() -> None:
    assert len({canonical_json(True), canonical_json(1), canonical_json(1.0)}) == 3


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (float("nan"), "value is nan; only finite floats"),
        ({"a": [1, float("inf")]}, "value['a'][1] is inf"),
        ({1: "x"}, "dict key 1 of type int"),
        ({"p": Path("/tmp")}, "value['p'] is a pathlib"),
        ({1, 2}, "builtins.set"),
        (b"bytes", "builtins.bytes"),
    ],
)
def test_values_without_a_canonical_form_are_refused(value: object, fragment: str) -> None:
    with pytest.raises(JournalEncodingError, match=fragment.replace("[", r"\[")) as info:
        canonical_json(value)
    assert isinstance(info.value, TypeError)
    assert "allowed" in str(info.value) or "only" in str(info.value)


def test_task_key_depends_on_function_and_item() -> None:
    k = task_key(train, {"lr": 0.1})
    assert k.startswith("train:")
    assert len(k.split(":")[1]) == 24
    assert k == task_key(train, {"lr": 0.1})
    assert k != task_key(train, {"lr": 0.2})
    assert k != task_key(other, {"lr": 0.1})


def test_task_key_of_partial_includes_bound_arguments() -> None:
    a = functools.partial(train, allocation=1)
    b = functools.partial(train, allocation=2)
    assert task_key(a, 1) != task_key(b, 1)
    assert task_key(a, 1) != task_key(train, 1)
    assert task_key(a, 1).startswith("train:")


def test_task_key_refuses_lambdas_and_unkeyable_items() -> None:
    with pytest.raises(JournalEncodingError, match="lambda"):
        task_key(lambda item, alloc: None, 1)
    with pytest.raises(JournalEncodingError, match=r"pass key="):
        task_key(train, object())
    with pytest.raises(JournalEncodingError, match="cannot name"):
        function_name(object())  # type: ignore[arg-type]


def test_task_key_is_identical_in_another_process() -> None:
    """Keys must not depend on hash randomisation or anything per-process."""
    code = (
        "from gpupool._journal.codec import task_key\n"
        "import tests.test_journal_codec as m\n"
        "print(task_key(m.train, {'lr': 0.1, 'layers': [1, 2], 'name': 'x'}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    # The function lives in this module under its import name in both processes.
    import tests.test_journal_codec as m

    assert out == task_key(m.train, {"name": "x", "layers": [1, 2], "lr": 0.1})


def test_check_key() -> None:
    assert check_key("trial-1") == "trial-1"
    with pytest.raises(TypeError, match="must be a str, got int"):
        check_key(1)
    with pytest.raises(ValueError, match="non-empty"):
        check_key("")
    with pytest.raises(ValueError, match="at most 512"):
        check_key("x" * 513)


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@given(_json_values)
def test_canonical_json_round_trips_plain_values(value: object) -> None:
    text = canonical_json(value)
    assert decode_json(text) == value
    assert canonical_json(decode_json(text)) == text  # a fixed point: stable across runs


@given(_json_values, _json_values)
def test_different_plain_values_get_different_keys(a: object, b: object) -> None:
    # JSON equality is stricter than Python's (1 == 1.0 == True in Python).
    if canonical_json(a) != canonical_json(b):
        assert task_key(train, a) != task_key(train, b)
    else:
        assert task_key(train, a) == task_key(train, b)


@given(st.dictionaries(st.text(max_size=5), st.integers(), max_size=6), st.randoms())
def test_dict_order_does_not_change_the_key(d: dict[str, int], rnd: Random) -> None:
    items = list(d.items())
    rnd.shuffle(items)
    assert task_key(train, dict(items)) == task_key(train, d)
