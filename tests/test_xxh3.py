"""The column-wise XXH3 must give exactly the xxhash library's values: sync state written by either one
is read by the other."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import xxhash
from hypothesis import given
from hypothesis import strategies as st

from shared.reading.xxh3 import SHORT_MAX, xxh3_64_array


def _reference(values) -> np.ndarray:
    return np.array([xxhash.xxh3_64_intdigest(v) for v in values], np.uint64)


def test_every_length_up_to_past_the_library_handover_matches_the_library():
    rng = random.Random(7)
    values = [rng.randbytes(length) for length in range(SHORT_MAX + 64) for _ in range(8)]
    values += [b"\x00" * n for n in range(40)] + [b"\xff" * n for n in range(40)]  # carries and zero words
    assert np.array_equal(xxh3_64_array(pa.array(values, pa.binary())), _reference(values))


def test_a_sliced_array_hashes_its_own_values():
    values = [f"person{i}@example.com".encode() * (i % 5) for i in range(50)]
    array = pa.array(values, pa.binary())
    for start in range(9):  # every alignment of the first value's bytes
        assert np.array_equal(xxh3_64_array(array.slice(start, 30)), _reference(values[start : start + 30]))


def test_an_empty_array_has_no_hashes():
    assert xxh3_64_array(pa.array([], pa.string())).dtype == np.uint64
    assert len(xxh3_64_array(pa.array([], pa.string()))) == 0


@given(st.lists(st.text(max_size=150), max_size=40))
def test_text_hashes_as_its_utf8_bytes(texts):
    assert np.array_equal(xxh3_64_array(pa.array(texts, pa.string())), _reference(t.encode() for t in texts))
