"""A string (or binary) Arrow array seen through numpy: each value's byte offsets, and the bytes, without a
Python object per value. Its own module because shared.planning.columnar tunes malloc when imported, and the hashes
(shared.reading.xxh3) and the C kernels (shared.planning.native) must not depend on that."""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def offsets(strings: pa.Array) -> np.ndarray:
    """The values' int32 offsets into the data buffer (len + 1 of them; a slice starts past 0)."""
    return np.frombuffer(strings.buffers()[1], np.int32, len(strings) + 1, offset=strings.offset * 4)


def data(strings: pa.Array, at: np.ndarray) -> np.ndarray:
    """The bytes of the values whose offsets are `at` (from offsets()): from the first value's start."""
    buffer = strings.buffers()[2]
    if buffer is None:  # no value has a byte
        return np.empty(0, np.uint8)
    return np.frombuffer(buffer, np.uint8)[at[0] : at[-1]]
