"""The topic contract `{root}/{district}/{profile}/{device_id}/{channel}` (DESIGN.md)."""

from __future__ import annotations

import pytest

from ingest.topics import Channel, Topic, TopicError, parse_topic, subscription_filters


@pytest.mark.parametrize(
    ("topic", "channel"),
    [
        ("city/pudong/water_level/wl-001/telemetry", Channel.TELEMETRY),
        ("city/pudong/elevator/el-7/event", Channel.EVENT),
        ("city/pudong/elevator/el-7/status", Channel.STATUS),
    ],
)
def test_parse_good_topic(topic: str, channel: Channel) -> None:
    t = parse_topic(topic, "city")
    assert t.root == "city"
    assert t.district == "pudong"
    assert t.device_id in ("wl-001", "el-7")
    assert t.channel is channel
    assert str(t) == topic


def test_parse_splits_every_level() -> None:
    assert parse_topic("sh/d-9/rain_gauge/RG.01/telemetry", "sh") == Topic(
        "sh", "d-9", "rain_gauge", "RG.01", Channel.TELEMETRY
    )


def test_topic_values_are_frozen() -> None:
    t = parse_topic("city/a/b/c/status", "city")
    with pytest.raises(AttributeError):
        t.device_id = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    "topic",
    [
        "town/pudong/water_level/wl-1/telemetry",  # another root
        "City/pudong/water_level/wl-1/telemetry",  # roots are case-sensitive
        "city/pudong/water_level/telemetry",  # too few levels
        "city/water_level/telemetry",
        "city",
        "",
        "city/pudong/water_level/wl-1/telemetry/extra",  # too many levels
        "city/pudong/water_level/wl-1/sub/telemetry",
        "city//water_level/wl-1/telemetry",  # empty district
        "city/pudong//wl-1/telemetry",  # empty profile
        "city/pudong/water_level//telemetry",  # empty device id
        "city/pudong/water_level/wl-1/",  # empty channel
        "/city/pudong/water_level/wl-1",  # leading slash shifts every level
    ],
)
def test_bad_topic_shape(topic: str) -> None:
    with pytest.raises(TopicError) as excinfo:
        parse_topic(topic, "city")
    assert excinfo.value.reason == "bad_topic"
    # The message names the topic and the expected shape.
    assert repr(topic) in str(excinfo.value)
    assert "city/<district>/<profile>/<device_id>/<channel>" in str(excinfo.value)


@pytest.mark.parametrize("channel", ["telemetrie", "events", "Telemetry", "state", "cmd"])
def test_unknown_channel(channel: str) -> None:
    topic = f"city/pudong/water_level/wl-1/{channel}"
    with pytest.raises(TopicError) as excinfo:
        parse_topic(topic, "city")
    assert excinfo.value.reason == "unknown_channel"
    assert repr(channel) in str(excinfo.value)


def test_topic_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="not city/"):
        parse_topic("x/y", "city")


def test_root_is_the_configured_one() -> None:
    assert parse_topic("t123/d/p/dev/event", "t123").root == "t123"
    with pytest.raises(TopicError):
        parse_topic("city/d/p/dev/event", "t123")


def test_subscription_filters_all_districts() -> None:
    assert subscription_filters("city") == ["city/+/+/+/+"]
    assert subscription_filters("city", ()) == ["city/+/+/+/+"]
    assert subscription_filters("city", []) == ["city/+/+/+/+"]


def test_subscription_filters_by_district() -> None:
    assert subscription_filters("city", ["pudong", "xuhui"]) == [
        "city/pudong/+/+/+",
        "city/xuhui/+/+/+",
    ]
    assert subscription_filters("sh", ("jingan",)) == ["sh/jingan/+/+/+"]


def test_every_filter_matches_only_parseable_depth() -> None:
    # A filter's level count is the contract's: five, so parse_topic never sees a
    # deeper or shallower topic from the subscription itself.
    for f in subscription_filters("city", ["a", "b"]) + subscription_filters("city"):
        assert len(f.split("/")) == 5
        assert f.startswith("city/")
