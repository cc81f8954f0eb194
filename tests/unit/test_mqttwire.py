"""The MQTT 5 codec of the ingest's receiver: packets built by hand, parsed in any chunking.

Pure tests of encoding and parsing; the receiver itself is tested against a real
Mosquitto in tests/integration/test_mqtt_receiver.py.
"""

from __future__ import annotations

import collections
import socket
import struct
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest.mqttwire import (
    SUBACK,
    ControlPacket,
    InboundMessage,
    ProtocolError,
    WireConnection,
    decode_connack,
    decode_properties,
    decode_suback,
    decode_varint,
    describe_disconnect,
    encode_connect,
    encode_pubacks,
    encode_subscribe,
    encode_varint,
)

NOW = datetime(2026, 11, 25, 2, 0, tzinfo=UTC)


def publish(topic: str, payload: bytes, mid: int = 1, qos: int = 1, props: bytes = b"") -> bytes:
    """A PUBLISH packet as a broker sends it."""
    body = struct.pack("!H", len(topic.encode())) + topic.encode()
    if qos:
        body += struct.pack("!H", mid)
    body += encode_varint(len(props)) + props + payload
    return bytes([0x30 | (qos << 1)]) + encode_varint(len(body)) + body


@pytest.mark.parametrize(
    ("n", "encoded"),
    [
        (0, b"\x00"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (16_383, b"\xff\x7f"),
        (16_384, b"\x80\x80\x01"),
        (268_435_455, b"\xff\xff\xff\x7f"),
    ],
)
def test_varint(n: int, encoded: bytes) -> None:
    assert encode_varint(n) == encoded
    assert decode_varint(encoded, 0) == (n, len(encoded))


def test_varint_limits() -> None:
    with pytest.raises(ValueError):
        encode_varint(268_435_456)
    with pytest.raises(ProtocolError):
        decode_varint(b"\xff\xff\xff\xff\x01", 0)
    with pytest.raises(IndexError):
        decode_varint(b"\x80", 0)


def test_connect_packet() -> None:
    packet = encode_connect(
        "ingest-1",
        keepalive=30,
        clean_start=False,
        session_expiry=604_800,
        receive_maximum=20_000,
        username="cityvitals",
        password="s3cret",
    )
    assert packet[0] == 0x10
    length, at = decode_varint(packet, 1)
    assert len(packet) == at + length
    body = packet[at:]
    assert body[:7] == b"\x00\x04MQTT\x05"
    flags = body[7]
    assert flags == 0x80 | 0x40  # user name, password; clean start off
    assert struct.unpack_from("!H", body, 8) == (30,)
    props, at = decode_properties(body, 10)
    assert props == {0x11: 604_800, 0x21: 20_000}
    assert body[at:] == b"\x00\x08ingest-1\x00\x0acityvitals\x00\x06s3cret"


def test_connect_clean_start_without_credentials() -> None:
    packet = encode_connect(
        "c", keepalive=0, clean_start=True, session_expiry=0, receive_maximum=65535
    )
    assert packet == b"\x10\x0e\x00\x04MQTT\x05\x02\x00\x00\x00\x00\x01c"


def test_subscribe_packet() -> None:
    packet = encode_subscribe(7, ["city/+/+/+/+", "x/#"], qos=1, retain_handling=1)
    assert packet[0] == 0x82
    length, at = decode_varint(packet, 1)
    assert packet[at:] == (b"\x00\x07\x00" + b"\x00\x0ccity/+/+/+/+\x11" + b"\x00\x03x/#\x11")
    assert len(packet) == at + length


def test_pubacks_are_short_and_in_order() -> None:
    assert encode_pubacks([1, 258, 65535]) == (
        b"\x40\x02\x00\x01" + b"\x40\x02\x01\x02" + b"\x40\x02\xff\xff"
    )
    assert encode_pubacks([]) == b""


def test_connack() -> None:
    ack = decode_connack(b"\x01\x00\x06\x13\x00\x3c\x21\x00\x0a")
    assert ack.session_present and ack.reason == 0
    assert ack.server_keepalive == 60
    refused = decode_connack(b"\x00\x86\x00")
    assert refused.reason == 0x86 and not refused.session_present


def test_suback_and_reason_string() -> None:
    body = b"\x00\x07" + b"\x08\x1f\x00\x05nope!" + b"\x01\x87"
    suback = decode_suback(body)
    assert suback.packet_id == 7
    assert suback.reasons == (0x01, 0x87)
    assert suback.reason_string == "nope!"


def test_properties_of_every_kind() -> None:
    props = (
        b"\x01\x01"  # payload format indicator
        + b"\x02\x00\x00\x00\x3c"  # message expiry
        + b"\x03\x00\x04json"  # content type
        + b"\x09\x00\x02\xbe\xef"  # correlation data
        + b"\x0b\x81\x01"  # subscription identifier 129
        + b"\x26\x00\x01k\x00\x01v"  # user property
        + b"\x26\x00\x01k\x00\x01w"
    )
    parsed, end = decode_properties(encode_varint(len(props)) + props, 0)
    assert end == len(props) + 1
    assert parsed == {
        0x01: 1,
        0x02: 60,
        0x03: "json",
        0x09: b"\xbe\xef",
        0x0B: 129,
        0x26: [("k", "v"), ("k", "w")],
    }
    with pytest.raises(ProtocolError):
        decode_properties(b"\x02\x7e\x00", 0)  # unknown identifier
    with pytest.raises(ProtocolError):
        decode_properties(b"\x03\x02\x00", 0)  # truncated


def test_disconnect_description() -> None:
    assert "normal" in describe_disconnect(b"")
    text = describe_disconnect(b"\x8e\x0b\x1f\x00\x08takeover")
    assert "session taken over (0x8e)" in text and "takeover" in text


class _Pair:
    """A WireConnection fed through a real socket pair."""

    def __init__(self) -> None:
        self.broker, ours = socket.socketpair()
        ours.setblocking(False)
        self.conn = WireConnection(ours)
        self.out: collections.deque[InboundMessage] = collections.deque()
        self.controls: list[ControlPacket] = []

    def feed(self, data: bytes) -> None:
        self.broker.sendall(data)
        while self.conn.fill() == 0:
            pass

    def parse(self, limit: int = 1_000_000, generation: int = 1) -> int:
        return self.conn.parse(limit, generation, NOW, self.out, self.controls)

    def close(self) -> None:
        self.broker.close()
        self.conn.close()


def test_publish_packets_in_one_read() -> None:
    pair = _Pair()
    try:
        stream = (
            publish("city/d/p/dev/telemetry", b'{"values": {}}', mid=1)
            + publish("city/d/p/dev/status", b"online", mid=0, qos=0)
            + publish("a/b", b"x" * 300, mid=65535, props=b"\x01\x01")
            + b"\x90\x04\x00\x01\x00\x01"  # a SUBACK between messages
        )
        pair.feed(stream)
        assert pair.parse() == 3
        assert list(pair.out) == [
            InboundMessage("city/d/p/dev/telemetry", b'{"values": {}}', 1, 1, False, NOW, 1),
            InboundMessage("city/d/p/dev/status", b"online", 0, 0, False, NOW, 1),
            InboundMessage("a/b", b"x" * 300, 65535, 1, False, NOW, 1),
        ]
        assert pair.controls == [ControlPacket(SUBACK, b"\x00\x01\x00\x01")]
        assert pair.conn.buffered == 0
    finally:
        pair.close()


def test_retain_flag_and_limit() -> None:
    pair = _Pair()
    try:
        retained = bytearray(publish("t/1", b"r", mid=5))
        retained[0] |= 0x01
        pair.feed(bytes(retained) + publish("t/2", b"a", mid=6) + publish("t/3", b"b", mid=7))
        assert pair.parse(limit=2) == 2
        assert [m.retain for m in pair.out] == [True, False]
        assert pair.conn.has_complete_packet()
        assert pair.parse(limit=2) == 1
        assert [m.mid for m in pair.out] == [5, 6, 7]
        assert not pair.conn.has_complete_packet()
    finally:
        pair.close()


@given(
    messages=st.lists(
        st.tuples(
            st.text(min_size=1, max_size=40).filter(lambda t: "\x00" not in t),
            st.binary(max_size=600),
            st.integers(1, 65535),
        ),
        min_size=1,
        max_size=30,
    ),
    cuts=st.lists(st.integers(1, 400), max_size=40),
)
def test_any_chunking_parses_the_same(
    messages: list[tuple[str, bytes, int]], cuts: list[int]
) -> None:
    stream = b"".join(publish(t, p, mid=m) for t, p, m in messages)
    pair = _Pair()
    try:
        at = 0
        for cut in [*cuts, len(stream)]:
            chunk = stream[at : at + cut]
            if chunk:
                pair.feed(chunk)
                pair.parse()
            at += cut
            if at >= len(stream):
                break
        if at < len(stream):
            pair.feed(stream[at:])
            pair.parse()
        assert [(m.topic, m.payload, m.mid) for m in pair.out] == messages
        assert pair.conn.buffered == 0
    finally:
        pair.close()


@pytest.mark.parametrize(
    "packet",
    [
        pytest.param(b"\x32\x03\x00\x0aab", id="topic-longer-than-packet"),
        pytest.param(b"\x32\x01\x00", id="no-room-for-topic-length"),
        pytest.param(b"\x32\x05\x00\x01t\x00\x01", id="no-properties-length"),
        pytest.param(b"\x36\x06\x00\x01t\x00\x01\x00", id="qos-3"),
        pytest.param(b"\x32\x06\x00\x01t\x00\x01\x05", id="properties-past-the-end"),
        pytest.param(b"\x32\x06\x00\x01t\x00\x01\x80", id="properties-length-cut"),
    ],
)
def test_malformed_publish_is_a_protocol_error(packet: bytes) -> None:
    pair = _Pair()
    try:
        # A well-formed packet follows, so a bad length cannot just run out of data.
        pair.feed(packet + publish("next", b"payload"))
        with pytest.raises(ProtocolError):
            pair.parse()
    finally:
        pair.close()
