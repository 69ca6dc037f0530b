"""XXH3-64 (seed 0) of every string in an Arrow column at once, in numpy: the same values as
`xxhash.xxh3_64_intdigest` on each string's UTF-8 bytes, without a Python call per string.

Sync state keys and fingerprints are xxh3, so the column-wise plan must produce exactly those values; the
xxhash library (the reference) computes them one Python call at a time, which was a quarter of the plan
pass. Strings of up to 128 bytes (emails and most fingerprinted rows) are hashed here, following the
reference's short-input paths (xxhash.h: XXH3_len_0to16_64b, XXH3_len_17to128_64b); longer ones go to the
library one at a time. Tests compare every length from 0 to 300 with the library.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import xxhash

from shared.reading import arrowtext

# XXH3's default secret (xxhash.h: XXH3_kSecret).
_SECRET = bytes.fromhex(
    "b8fe6c3923a44bbe7c01812cf721ad1cded46de9839097db7240a4a4b7b3671f"
    "cb79e64eccc0e578825ad07dccff7221b8084674f743248ee03590e6813a264c"
    "3c2852bb91c300cb88d0658b1b532ea371644897a20df94e3819ef46a9deacd8"
    "a8fa763fe39c343ff9dcbbc7c70b4f1d8a51e04bcdb45931c89f7ec9d9787364"
    "eac5ac8334d3ebc3c581a0fffa1363eb170ddd51b7f0da49d316552629d4689e"
    "2b16be587d47a1fc8ff8b8d17ad031ce45cb3a8f95160428afd7fbcabb4b407e"
)
_U64 = np.uint64
_M32 = _U64(0xFFFFFFFF)
_PRIME32_1, _PRIME32_2, _PRIME32_3 = _U64(0x9E3779B1), _U64(0x85EBCA77), _U64(0xC2B2AE3D)
_PRIME64_1, _PRIME64_2, _PRIME64_3 = _U64(0x9E3779B185EBCA87), _U64(0xC2B2AE3D27D4EB4F), _U64(0x165667B19E3779F9)
_PRIME_MX1, _PRIME_MX2 = _U64(0x165667919E3779F9), _U64(0x9FB21C651E98DF25)
SHORT_MAX = 128  # longer strings are hashed by the library


def _secret64(at: int) -> np.uint64:
    return _U64(int.from_bytes(_SECRET[at : at + 8], "little"))


def _secret32(at: int) -> np.uint64:
    return _U64(int.from_bytes(_SECRET[at : at + 4], "little"))


def _mul128_fold64(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Low 64 bits xor high 64 bits of the 128-bit product (xxhash.h's portable XXH_mult64to128)."""
    a_lo, a_hi, b_lo, b_hi = a & _M32, a >> _U64(32), b & _M32, b >> _U64(32)
    lo_lo, hi_lo, lo_hi = a_lo * b_lo, a_hi * b_lo, a_lo * b_hi
    cross = (lo_lo >> _U64(32)) + (hi_lo & _M32) + lo_hi
    upper = (hi_lo >> _U64(32)) + (cross >> _U64(32)) + a_hi * b_hi
    lower = (cross << _U64(32)) | (lo_lo & _M32)
    return lower ^ upper


def _xxh64_avalanche(h: np.ndarray) -> np.ndarray:
    h = (h ^ (h >> _U64(33))) * _PRIME64_2
    h = (h ^ (h >> _U64(29))) * _PRIME64_3
    return h ^ (h >> _U64(32))


def _xxh3_avalanche(h: np.ndarray) -> np.ndarray:
    h = (h ^ (h >> _U64(37))) * _PRIME_MX1
    return h ^ (h >> _U64(32))


def _rrmxmx(h: np.ndarray, length: np.ndarray) -> np.ndarray:
    h = h ^ (((h << _U64(49)) | (h >> _U64(15))) ^ ((h << _U64(24)) | (h >> _U64(40))))
    h = h * _PRIME_MX2
    h = (h ^ ((h >> _U64(35)) + length)) * _PRIME_MX2
    return h ^ (h >> _U64(28))


class _Bytes:
    """Little-endian reads at any byte position of a buffer, padded so that no read runs off its end.
    64-bit reads are put together from aligned words: numpy's gather from an unaligned view is 3x slower."""

    def __init__(self, data: np.ndarray):
        self.buf = np.concatenate([data, np.zeros(24 - len(data) % 8, np.uint8)])
        self.words = self.buf.view("<u8")
        self.u32 = np.ndarray((len(self.buf) - 3,), "<u4", self.buf, 0, (1,))

    def u64(self, at: np.ndarray) -> np.ndarray:
        return self.u64_pair(at)[0]

    def u64_pair(self, at: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The 64-bit values at `at` and at `at` + 8."""
        word = at >> 3
        right = ((at & 7) << 3).astype(_U64)
        left = _U64(64) - right  # a shift by 64 gives 0 in numpy, as the aligned case needs
        first, second, third = self.words[word], self.words[word + 1], self.words[word + 2]
        return (first >> right) | (second << left), (second >> right) | (third << left)

    def mix16(self, at: np.ndarray, secret: int) -> np.ndarray:
        lo, hi = self.u64_pair(at)
        return _mul128_fold64(lo ^ _secret64(secret), hi ^ _secret64(secret + 8))


def _len_1to3(data: _Bytes, start: np.ndarray, length: np.ndarray) -> np.ndarray:
    c1 = data.buf[start].astype(_U64)
    c2 = data.buf[start + (length >> 1)].astype(_U64)
    c3 = data.buf[start + length - 1].astype(_U64)
    combined = (c1 << _U64(16)) | (c2 << _U64(24)) | c3 | (length.astype(_U64) << _U64(8))
    return _xxh64_avalanche(combined ^ (_secret32(0) ^ _secret32(4)))


def _len_4to8(data: _Bytes, start: np.ndarray, length: np.ndarray) -> np.ndarray:
    first, last = data.u32[start].astype(_U64), data.u32[start + length - 4].astype(_U64)
    keyed = (last + (first << _U64(32))) ^ (_secret64(8) ^ _secret64(16))
    return _rrmxmx(keyed, length.astype(_U64))


def _len_9to16(data: _Bytes, start: np.ndarray, length: np.ndarray) -> np.ndarray:
    lo = data.u64(start) ^ (_secret64(24) ^ _secret64(32))
    hi = data.u64(start + length - 8) ^ (_secret64(40) ^ _secret64(48))
    acc = length.astype(_U64) + lo.byteswap() + hi + _mul128_fold64(lo, hi)
    return _xxh3_avalanche(acc)


def _len_17to128(data: _Bytes, start: np.ndarray, length: np.ndarray) -> np.ndarray:
    acc = length.astype(_U64) * _PRIME64_1
    end = start + length
    # Rounds from both ends, as many as the length needs: > 96 bytes four pairs, > 64 three, > 32 two.
    for rounds, floor in ((4, 96), (3, 64), (2, 32), (1, 0)):
        take = np.flatnonzero(length > floor) if floor else slice(None)
        if floor and not len(take):
            continue
        pair = rounds - 1
        front = data.mix16(start[take] + 16 * pair, 32 * pair)
        back = data.mix16(end[take] - 16 * (pair + 1), 32 * pair + 16)
        acc[take] += front + back
    return _xxh3_avalanche(acc)


_EMPTY = int(_xxh64_avalanche(np.array([_secret64(56) ^ _secret64(64)]))[0])
_PATHS = ((1, 3, _len_1to3), (4, 8, _len_4to8), (9, 16, _len_9to16), (17, SHORT_MAX, _len_17to128))


def xxh3_64_array(strings: pa.Array) -> np.ndarray:
    """uint64 XXH3-64 of each value of a string or binary array without nulls."""
    n = len(strings)
    at = arrowtext.offsets(strings)
    offsets = at.astype(np.int64)
    start, length = offsets[:-1] - offsets[0], np.diff(offsets)
    data = _Bytes(arrowtext.data(strings, at))
    out = np.full(n, _EMPTY, _U64)
    for low, high, path in _PATHS:
        rows = np.flatnonzero((length >= low) & (length <= high))
        if len(rows):
            out[rows] = path(data, start[rows], length[rows])
    for row in np.flatnonzero(length > SHORT_MAX).tolist():
        out[row] = xxhash.xxh3_64_intdigest(data.buf[start[row] : start[row] + length[row]].tobytes())
    return out
