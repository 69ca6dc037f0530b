"""Job building: every profile lands in exactly one batch or in the rejects, within Klaviyo's limits."""

from __future__ import annotations

import itertools

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.planning.profiles import MAX_PROFILE_BYTES
from shared.pushing.klaviyo import (
    ENVELOPE_RESERVE,
    MAX_REQUEST_BYTES,
    BatchBuilder,
    FlushPolicy,
    ImportBatch,
    RejectedProfile,
    build_batches,
    import_body,
    serialize_profile,
)


def profile(i: int, pad: int = 0) -> bytes:
    return serialize_profile({"email": f"p{i}@example.com", "properties": {"note": "x" * pad}})


@st.composite
def inputs(draw):
    policy = FlushPolicy(
        max_profiles=draw(st.integers(1, 12)),
        max_body_bytes=draw(st.integers(120, 600)),
        max_profile_bytes=draw(st.integers(60, 120)),
    )
    pads = draw(st.lists(st.integers(0, 120), max_size=60))
    items = [(f"part-00001.csv:row {i + 1}", profile(i, pad)) for i, pad in enumerate(pads)]
    return policy, items


@settings(max_examples=300, deadline=None)
@given(inputs(), st.one_of(st.none(), st.text(min_size=1, max_size=20)))
def test_every_profile_lands_in_one_batch_or_the_rejects(case, list_id):
    policy, items = case
    rejects: list[RejectedProfile] = []
    batches = list(build_batches(iter(items), policy, rejects))

    placed = [(loc, p) for b in batches for loc, p in zip(b.locators, b.profiles, strict=True)]
    rejected = {r.locator for r in rejects}
    # exactly once, and in input order
    assert placed == [it for it in items if it[0] not in rejected]
    assert len(placed) + len(rejects) == len(items)
    assert {loc for loc, p in items if len(p) > policy.max_profile_bytes} == rejected
    for r in rejects:
        assert r.code == "profile_too_large" and "bytes" in r.detail
    for b in batches:
        assert 1 <= len(b) <= policy.max_profiles
        assert b.payload_bytes == len(b"".join(b.profiles)) + len(b) - 1
        assert b.payload_bytes <= policy.max_body_bytes
        body = b.body(list_id)
        assert len(body) <= policy.max_body_bytes + ENVELOPE_RESERVE
        doc = orjson.loads(body)  # the concatenated body is the JSON it claims to be
        assert doc["data"]["type"] == "profile-bulk-import-job"
        assert doc["data"]["attributes"]["profiles"]["data"] == [orjson.loads(p) for p in b.profiles]
        if list_id is None:
            assert "relationships" not in doc["data"]
        else:
            assert doc["data"]["relationships"] == {"lists": {"data": [{"type": "list", "id": list_id}]}}
    # a batch is only closed when the next profile would not have fitted
    for b, nxt in itertools.pairwise(batches):
        assert len(b) == policy.max_profiles or b.payload_bytes + 1 + len(nxt.profiles[0]) > policy.max_body_bytes


def test_default_policy_is_klaviyos_limits():
    policy = FlushPolicy()
    assert policy.max_profiles == 10_000
    assert policy.max_profile_bytes == 100_000 == MAX_PROFILE_BYTES  # the plan rejects what the client would
    assert policy.max_body_bytes + ENVELOPE_RESERVE == MAX_REQUEST_BYTES == 5_000_000


def test_count_limit_splits_at_10000():
    items = ((f"row {i}", profile(i)) for i in range(25_001))
    sizes = [len(b) for b in build_batches(items)]
    assert sizes == [10_000, 10_000, 5_001]


def test_byte_limit_splits_wide_profiles_under_5_mb():
    items = [(f"row {i}", profile(i, pad=90_000)) for i in range(120)]
    batches = list(build_batches(items))
    assert sum(map(len, batches)) == 120
    assert len(batches) == 3  # 55 profiles of ~90 KB fit in a body
    for b in batches:
        assert len(b.body("AbC123")) <= MAX_REQUEST_BYTES


def test_oversize_profile_is_rejected_with_a_reason():
    big = profile(1, pad=100_001)
    builder = BatchBuilder()
    out = [builder.add("part-00002.csv:row 7", big), builder.add("part-00002.csv:row 8", profile(2))]
    assert out == [None, None]
    assert builder.rejects == [
        RejectedProfile(
            "part-00002.csv:row 7",
            f"profile is {len(big):,} bytes serialised; Klaviyo accepts at most 100,000 bytes per profile",
            "profile_too_large",
        )
    ]
    last = builder.flush()
    assert last is not None and last.locators == ["part-00002.csv:row 8"]
    assert builder.flush() is None


def test_body_is_built_by_concatenation():
    a, b = (
        b'{"type":"profile","attributes":{"email":"a@x.com"}}',
        b'{"type":"profile","attributes":{"email":"b@x.com"}}',
    )
    assert import_body([a, b], "Xy12") == (
        b'{"data":{"type":"profile-bulk-import-job","attributes":{"profiles":{"data":['
        + a
        + b","
        + b
        + b']}},"relationships":{"lists":{"data":[{"type":"list","id":"Xy12"}]}}}}'
    )
    assert orjson.loads(import_body([], None)) == {
        "data": {"type": "profile-bulk-import-job", "attributes": {"profiles": {"data": []}}}
    }


def test_select_keeps_locators_aligned():
    batch = ImportBatch.of((f"row {i}", profile(i)) for i in range(5))
    sub = batch.select([0, 3, 4])
    assert sub.locators == ["row 0", "row 3", "row 4"]
    assert sub.profiles == [batch.profiles[0], batch.profiles[3], batch.profiles[4]]
    assert sub.payload_bytes == len(b",".join(sub.profiles))


def test_policy_rejects_impossible_limits():
    with pytest.raises(ValueError):
        FlushPolicy(max_profiles=0)
    with pytest.raises(ValueError):
        FlushPolicy(max_body_bytes=100, max_profile_bytes=200)


@settings(max_examples=300, deadline=None)
@given(inputs(), st.lists(st.integers(1, 20), max_size=6))
def test_add_many_cuts_the_same_batches_as_add(case, cuts):
    """Profiles added in groups (as a push adds each chunk's) give exactly the batches and rejects of adding
    them one by one."""
    policy, items = case
    one, many = BatchBuilder(policy), BatchBuilder(policy)
    expected = [b for b in one.build(items)]
    got, start = [], 0
    for size in [*cuts, len(items)]:
        group = items[start : start + size]
        sizes = np.array([len(p) for _, p in group]) if size % 2 else None  # given, or measured by add_many
        got += many.add_many([loc for loc, _ in group], [p for _, p in group], sizes)
        start += size
    if (last := many.flush()) is not None:
        got.append(last)
    assert [(b.locators, b.profiles, b.payload_bytes) for b in got] == [
        (b.locators, b.profiles, b.payload_bytes) for b in expected
    ]
    assert many.rejects == one.rejects
