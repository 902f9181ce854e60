"""The shared argument checks: types, bounds and wording."""

from __future__ import annotations

import math

import numpy as np
import pytest

from carto_assets.core.validate import check_choice, check_float, check_int, check_seed


def test_check_int_accepts_python_and_numpy_integers() -> None:
    assert check_int("n", 3, minimum=1) == 3
    assert type(check_int("n", np.int64(4), minimum=1, maximum=4)) is int


@pytest.mark.parametrize("value", [2.5, "3", None, True])
def test_check_int_rejects_other_types_with_type_error(value: object) -> None:
    with pytest.raises(TypeError, match=r"n must be an integer >= 1, got"):
        check_int("n", value, minimum=1)


def test_check_int_bounds_name_the_range() -> None:
    with pytest.raises(ValueError, match=r"k must be an integer >= 1, got 0"):
        check_int("k", 0, minimum=1)
    with pytest.raises(ValueError, match=r"size must be an integer in \[16, 1024\], got 2000"):
        check_int("size", 2000, minimum=16, maximum=1024)


def test_check_float_bounds_and_non_finite() -> None:
    assert check_float("t", 1, low=0, high=1, low_open=True) == 1.0
    with pytest.raises(ValueError, match=r"t must be a number in \(0, 1\], got 0"):
        check_float("t", 0, low=0, high=1, low_open=True)
    with pytest.raises(ValueError, match="finite number > 0"):
        check_float("lr", math.inf, low=0, low_open=True)
    with pytest.raises(ValueError, match="got nan"):
        check_float("lr", math.nan)
    with pytest.raises(TypeError, match="lr must be"):
        check_float("lr", "0.1")


def test_check_choice_and_seed() -> None:
    assert check_choice("method", "lsh", ("lsh", "exact")) == "lsh"
    with pytest.raises(ValueError, match=r"method must be one of 'lsh', 'exact', got 'x'"):
        check_choice("method", "x", ("lsh", "exact"))
    assert check_seed("seed", 2**32 - 1) == 2**32 - 1
    with pytest.raises(ValueError, match="seed must be an integer in"):
        check_seed("seed", -1)
