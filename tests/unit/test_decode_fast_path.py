"""The decoder's fast path for telemetry items gives exactly what the general path gives.

`MessageDecoder._items` handles the common item shape (epoch-ms ts, valid seq, plain
numbers) in a tight loop and hands everything else to the general per-item code. A
decoder whose `_items` always takes the general path is the reference: readings,
quality flags, seq range, out-of-range count and dead letter must be equal.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devices import load_profiles
from devices.profile import DeviceProfile
from ingest.decode import DeadLetterReason, DecodedMessage, MessageDecoder
from ingest.topics import Topic

NOW = datetime(2026, 11, 25, 2, 0, 0, 123_456, tzinfo=UTC)
"""Not a whole millisecond: the fast path's window edge meets float rounding."""
NOW_MS = int(NOW.timestamp() * 1000)
PROFILES = load_profiles()
REGISTRY = {"wl-1": "water_level", "el-1": "elevator", "aq-1": "air_quality"}
TOPICS = {
    "water_level": "city/pudong/water_level/wl-1/telemetry",
    "elevator": "city/pudong/elevator/el-1/telemetry",
    "air_quality": "city/pudong/air_quality/aq-1/telemetry",
}


class GeneralOnly(MessageDecoder):
    """The reference: every item through the general code."""

    def _items(
        self,
        t: Topic,
        profile: DeviceProfile,
        items: list[Any],
        now: datetime,
        out: DecodedMessage,
        problems: list[tuple[DeadLetterReason, str]],
        batch: bool,
    ) -> None:
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                problems.append((DeadLetterReason.BAD_STRUCTURE, f"readings[{i}] is not an object"))
                continue
            where = f"readings[{i}]." if batch else ""
            self._telemetry(t, profile, item, now, out, problems, where)


TOLERANCE_MS = 5 * 60_000

EDGE_TIMESTAMPS = [
    946_684_800_000,
    946_684_799_999,
    4_102_444_799_999,
    4_102_444_800_000,
    NOW_MS + TOLERANCE_MS - 2,
    NOW_MS + TOLERANCE_MS - 1,
    NOW_MS + TOLERANCE_MS,
    NOW_MS + TOLERANCE_MS + 1,
    NOW_MS + TOLERANCE_MS + 2,
    NOW_MS - 1,
]
"""The era bounds and the future tolerance, where the fast path hands over."""
timestamps = st.one_of(
    st.none(),
    st.integers(NOW_MS - 10**9, NOW_MS + 10**7),
    st.sampled_from(EDGE_TIMESTAMPS),
    st.floats(NOW_MS - 1e6, NOW_MS + 1e6, allow_nan=False),
    st.sampled_from(["2026-11-25T10:00:00+08:00", "2026-11-25T10:00:00", "soon", True]),
)
BOUNDS = sorted(
    {
        bound
        for name in TOPICS
        for spec in PROFILES[name].metrics.values()
        if spec.range is not None
        for bound in spec.range
    }
)
"""Every range bound of these profiles: inclusive, so on it a value is not flagged."""
near_bounds = st.sampled_from(BOUNDS).flatmap(
    lambda b: st.sampled_from([b, int(b), b + 0.001, b - 0.001, int(b) + 1, int(b) - 1])
)
numbers = st.one_of(
    near_bounds,
    near_bounds,
    st.integers(-(2**53), 2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, 1, -1, 0.5, 2.0, 1e300, -0.0, 3.21]),
)
raw_values = st.one_of(numbers, st.booleans(), st.sampled_from(["up", "open", "x", None]))
metrics = st.sampled_from(
    [
        # water_level
        "level_m",
        "battery_v",
        "trend",
        # elevator: int, bool and enum metrics
        "floor",
        "door",
        "state",
        "load_pct",
        "passengers_present",
        # air_quality
        "pm2_5",
        "humidity_pct",
        # unknown to all
        "salinity_psu",
    ]
)
items: st.SearchStrategy[Any] = st.one_of(
    st.fixed_dictionaries(
        {"ts": timestamps, "values": st.dictionaries(metrics, raw_values, max_size=4)},
        optional={
            "seq": st.one_of(st.integers(-5, 2**63 + 5), st.sampled_from([None, 1.0, "7", True]))
        },
    ),
    st.sampled_from([1, "x", None, [], {"ts": NOW_MS}]),
)


@settings(max_examples=1000, suppress_health_check=[HealthCheck.too_slow])
@given(
    profile=st.sampled_from(sorted(TOPICS)),
    batch=st.lists(items, min_size=1, max_size=6),
    single=st.booleans(),
)
def test_fast_path_matches_the_general_path(profile: str, batch: list[Any], single: bool) -> None:
    if single and isinstance(batch[0], dict):
        payload = orjson.dumps(batch[0])
    else:
        payload = orjson.dumps({"readings": batch})
    topic = TOPICS[profile]
    fast = MessageDecoder(PROFILES, REGISTRY).decode(topic, payload, NOW)
    general = GeneralOnly(PROFILES, REGISTRY).decode(topic, payload, NOW)
    assert fast == general


def test_the_fast_path_is_taken_for_canonical_batches() -> None:
    """A canonical batch gives the expected readings (and exercises the fast loop)."""
    batch = {
        "readings": [
            {"ts": NOW_MS - 60_000 * (3 - i), "seq": 7 + i, "values": {"level_m": 1.5 + i}}
            for i in range(3)
        ]
    }
    msg = MessageDecoder(PROFILES, REGISTRY).decode(TOPICS["water_level"], orjson.dumps(batch), NOW)
    assert msg.dead_letter is None
    start = datetime.fromtimestamp(NOW_MS // 1000, UTC)  # whole seconds before NOW
    assert [(r.ts, r.value, r.quality) for r in msg.readings] == [
        (start + timedelta(milliseconds=NOW_MS % 1000, minutes=i - 3), 1.5 + i, 0) for i in range(3)
    ]
    assert (msg.first_seq, msg.last_seq) == (7, 9)


def _both(topic: str, payload: bytes) -> tuple[DecodedMessage, DecodedMessage]:
    return (
        MessageDecoder(PROFILES, REGISTRY).decode(topic, payload, NOW),
        GeneralOnly(PROFILES, REGISTRY).decode(topic, payload, NOW),
    )


@pytest.mark.parametrize("ts", EDGE_TIMESTAMPS)
def test_timestamp_edges_match(ts: int) -> None:
    payload = orjson.dumps({"readings": [{"ts": ts, "seq": 1, "values": {"level_m": 1.0}}]})
    fast, general = _both(TOPICS["water_level"], payload)
    assert fast == general


@pytest.mark.parametrize(
    ("profile", "metric"),
    [("water_level", "level_m"), ("elevator", "floor"), ("air_quality", "pm2_5")],
)
def test_range_edges_match(profile: str, metric: str) -> None:
    spec = PROFILES[profile].metrics[metric]
    assert spec.range is not None
    edges: list[float] = []
    for bound in spec.range:
        edges += [bound, int(bound), bound + 0.5, bound - 0.5, int(bound) + 1, int(bound) - 1]
    payload = orjson.dumps(
        {
            "readings": [
                {"ts": NOW_MS - 1000 + i, "values": {metric: v}} for i, v in enumerate(edges)
            ]
        }
    )
    fast, general = _both(TOPICS[profile], payload)
    assert fast == general
