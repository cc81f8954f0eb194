"""The MQTT 5 wire protocol for the ingest's receiving side: one connection, no threads.

paho spends most of the ingest's CPU on per-packet work (a select and several
Python objects per message, a socket write and a wake-up per acknowledgement).
This connection parses every packet that one large `recv` brought in a single
loop and writes the PUBACKs of a committed batch in one send. It speaks just
what a QoS 1 subscriber with a persistent session needs: CONNECT/CONNACK,
SUBSCRIBE/SUBACK, PUBLISH in, PUBACK out, PINGREQ/PINGRESP and DISCONNECT.

Threading is the caller's business (see `ingest.mqtt.MqttReceiver`): one
thread owns a `WireConnection` and does all its reads and writes.
"""

from __future__ import annotations

import collections
import socket
import ssl
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

PROTOCOL_LEVEL = 5

# Packet types (the high nibble of the first byte).
CONNECT = 1
CONNACK = 2
PUBLISH = 3
PUBACK = 4
PUBREC = 5
PUBREL = 6
PUBCOMP = 7
SUBSCRIBE = 8
SUBACK = 9
PINGREQ = 12
PINGRESP = 13
DISCONNECT = 14
AUTH = 15

PINGREQ_PACKET = b"\xc0\x00"
DISCONNECT_PACKET = b"\xe0\x00"

# Property identifiers used here.
SESSION_EXPIRY_INTERVAL = 0x11
RECEIVE_MAXIMUM = 0x21
SERVER_KEEP_ALIVE = 0x13
REASON_STRING = 0x1F
ASSIGNED_CLIENT_IDENTIFIER = 0x12

RETAIN_SEND_ALWAYS = 0
RETAIN_SEND_IF_NEW_SUBSCRIPTION = 1
RETAIN_DO_NOT_SEND = 2

REASONS = {
    0x00: "success",
    0x01: "granted QoS 1",
    0x02: "granted QoS 2",
    0x04: "disconnect with will message",
    0x80: "unspecified error",
    0x81: "malformed packet",
    0x82: "protocol error",
    0x83: "implementation specific error",
    0x84: "unsupported protocol version",
    0x85: "client identifier not valid",
    0x86: "bad user name or password",
    0x87: "not authorized",
    0x88: "server unavailable",
    0x89: "server busy",
    0x8A: "banned",
    0x8B: "server shutting down",
    0x8C: "bad authentication method",
    0x8D: "keep alive timeout",
    0x8E: "session taken over",
    0x8F: "topic filter invalid",
    0x90: "topic name invalid",
    0x91: "packet identifier in use",
    0x93: "receive maximum exceeded",
    0x94: "topic alias invalid",
    0x95: "packet too large",
    0x96: "message rate too high",
    0x97: "quota exceeded",
    0x98: "administrative action",
    0x99: "payload format invalid",
    0x9A: "retain not supported",
    0x9B: "QoS not supported",
    0x9C: "use another server",
    0x9D: "server moved",
    0x9E: "shared subscriptions not supported",
    0x9F: "connection rate exceeded",
    0xA0: "maximum connect time",
    0xA1: "subscription identifiers not supported",
    0xA2: "wildcard subscriptions not supported",
}

# MQTT 3.1.1 CONNACK return codes: what a broker that does not speak MQTT 5 answers.
_V311_RETURN_CODES = {
    1: "unacceptable protocol version (the broker does not speak MQTT 5)",
    2: "identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}


class WireError(Exception):
    """Base of this module's errors."""


class ConnectionLostError(WireError):
    """The connection ended: the broker closed it, went silent or sent DISCONNECT."""


class ProtocolError(WireError):
    """The broker sent something this client cannot make sense of."""


class BrokerRefusedError(WireError):
    """The broker answered CONNECT with a failure reason code."""

    def __init__(self, reason: int, message: str) -> None:
        self.reason = reason
        super().__init__(message)

    @property
    def bad_credentials(self) -> bool:
        return self.reason in (0x86, 0x87, 0x8C)


def reason_name(code: int) -> str:
    return f"{REASONS.get(code, 'unknown reason')} (0x{code:02x})"


# -- encoding -------------------------------------------------------------------------------


def encode_varint(n: int) -> bytes:
    if not 0 <= n <= 268_435_455:
        raise ValueError(f"{n} does not fit an MQTT variable byte integer")
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(value: str | bytes) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    if len(data) > 65535:
        raise ValueError("an MQTT string holds at most 65,535 bytes")
    return struct.pack("!H", len(data)) + data


def _packet(first_byte: int, body: bytes) -> bytes:
    return bytes([first_byte]) + encode_varint(len(body)) + body


def encode_connect(
    client_id: str,
    *,
    keepalive: int,
    clean_start: bool,
    session_expiry: int,
    receive_maximum: int,
    username: str | None = None,
    password: str | None = None,
) -> bytes:
    if not 1 <= receive_maximum <= 65535:
        raise ValueError("receive maximum must be from 1 to 65,535")
    flags = 0x02 if clean_start else 0
    payload = _string(client_id)
    if username is not None:
        flags |= 0x80
        payload += _string(username)
    if password is not None:
        flags |= 0x40
        payload += _string(password.encode())
    props = b""
    if session_expiry:
        props += struct.pack("!BI", SESSION_EXPIRY_INTERVAL, min(session_expiry, 0xFFFFFFFF))
    if receive_maximum != 65535:
        props += struct.pack("!BH", RECEIVE_MAXIMUM, receive_maximum)
    variable = (
        _string("MQTT")
        + bytes([PROTOCOL_LEVEL, flags])
        + struct.pack("!H", keepalive)
        + encode_varint(len(props))
        + props
    )
    return _packet(CONNECT << 4, variable + payload)


def encode_subscribe(
    packet_id: int, filters: Iterable[str], qos: int = 1, retain_handling: int = 0
) -> bytes:
    body = struct.pack("!H", packet_id) + b"\x00"  # no properties
    options = qos | (retain_handling << 4)
    for f in filters:
        body += _string(f) + bytes([options])
    return _packet((SUBSCRIBE << 4) | 0x02, body)


def encode_pubacks(packet_ids: list[int]) -> bytes:
    """PUBACKs with reason Success, in the order given (the short form: 4 bytes each)."""
    return struct.pack(f"!{len(packet_ids)}I", *[0x40020000 | i for i in packet_ids])


# -- decoding -------------------------------------------------------------------------------


def decode_varint(data: bytes, at: int) -> tuple[int, int]:
    """The variable byte integer at `at` and the offset just after it."""
    value, shift = 0, 0
    for i in range(at, min(at + 4, len(data))):
        byte = data[i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i + 1
        shift += 7
    if len(data) - at >= 4:
        raise ProtocolError("malformed variable byte integer")
    raise IndexError("incomplete variable byte integer")


_FIXED = {1: "!B", 2: "!H", 4: "!I"}
_PROPERTY_SIZES = {
    0x01: 1, 0x17: 1, 0x19: 1, 0x24: 1, 0x25: 1, 0x28: 1, 0x29: 1, 0x2A: 1,
    0x13: 2, 0x21: 2, 0x22: 2, 0x23: 2,
    0x02: 4, 0x11: 4, 0x18: 4, 0x27: 4,
}  # fmt: skip
_PROPERTY_STRINGS = {0x03, 0x08, 0x12, 0x15, 0x1A, 0x1C, 0x1F}
_PROPERTY_BINARY = {0x09, 0x16}
_USER_PROPERTY = 0x26
_SUBSCRIPTION_IDENTIFIER = 0x0B


def decode_properties(data: bytes, at: int) -> tuple[dict[int, object], int]:
    """The property list at `at` (length first) and the offset just after it.

    User properties collect into a list of (name, value) pairs.
    """
    length, at = decode_varint(data, at)
    end = at + length
    if end > len(data):
        raise ProtocolError("properties run past the end of the packet")
    props: dict[int, object] = {}
    try:
        while at < end:
            ident = data[at]
            at += 1
            size = _PROPERTY_SIZES.get(ident)
            if size is not None:
                (props[ident],) = struct.unpack_from(_FIXED[size], data, at)
                at += size
            elif ident in _PROPERTY_STRINGS or ident in _PROPERTY_BINARY:
                (n,) = struct.unpack_from("!H", data, at)
                raw = bytes(data[at + 2 : at + 2 + n])
                at += 2 + n
                props[ident] = raw.decode("utf-8", "replace") if ident in _PROPERTY_STRINGS else raw
            elif ident == _USER_PROPERTY:
                (n,) = struct.unpack_from("!H", data, at)
                name = bytes(data[at + 2 : at + 2 + n]).decode("utf-8", "replace")
                at += 2 + n
                (m,) = struct.unpack_from("!H", data, at)
                value = bytes(data[at + 2 : at + 2 + m]).decode("utf-8", "replace")
                at += 2 + m
                pairs = props.setdefault(_USER_PROPERTY, [])
                assert isinstance(pairs, list)
                pairs.append((name, value))
            elif ident == _SUBSCRIPTION_IDENTIFIER:
                props[ident], at = decode_varint(data, at)
            else:
                raise ProtocolError(f"unknown property identifier 0x{ident:02x}")
    except (struct.error, IndexError):
        raise ProtocolError("truncated property") from None
    if at != end:
        raise ProtocolError("a property runs past the property length")
    return props, end


@dataclass(frozen=True, slots=True)
class ConnAck:
    session_present: bool
    reason: int
    properties: dict[int, object] = field(default_factory=dict)

    @property
    def server_keepalive(self) -> int | None:
        value = self.properties.get(SERVER_KEEP_ALIVE)
        return value if isinstance(value, int) else None


def decode_connack(body: bytes) -> ConnAck:
    if len(body) < 2:
        raise ProtocolError("CONNACK shorter than 2 bytes")
    props: dict[int, object] = {}
    if len(body) > 2:
        props, _ = decode_properties(body, 2)
    return ConnAck(bool(body[0] & 0x01), body[1], props)


@dataclass(frozen=True, slots=True)
class SubAck:
    packet_id: int
    reasons: tuple[int, ...]
    reason_string: str | None = None


def decode_suback(body: bytes) -> SubAck:
    if len(body) < 3:
        raise ProtocolError("SUBACK shorter than 3 bytes")
    (packet_id,) = struct.unpack_from("!H", body)
    props, at = decode_properties(body, 2)
    text = props.get(REASON_STRING)
    return SubAck(packet_id, tuple(body[at:]), text if isinstance(text, str) else None)


def describe_disconnect(body: bytes) -> str:
    """What a DISCONNECT from the broker says, for logs and `last_error`."""
    if not body:
        return "the broker sent DISCONNECT (normal disconnection)"
    text = f"the broker sent DISCONNECT: {reason_name(body[0])}"
    if len(body) > 1:
        try:
            props, _ = decode_properties(body, 1)
        except ProtocolError:
            return text
        reason = props.get(REASON_STRING)
        if isinstance(reason, str) and reason:
            text += f" ({reason})"
    return text


class InboundMessage(NamedTuple):
    """A PUBLISH as received (a named tuple: one is built per message, cheaply)."""

    topic: str
    payload: bytes
    mid: int
    """Packet identifier; 0 for QoS 0."""
    qos: int
    retain: bool
    received_at: datetime
    generation: int
    """Connection the message came on: acks are valid only on that connection."""


@dataclass(frozen=True, slots=True)
class ControlPacket:
    """A packet other than PUBLISH, for the connection's owner to act on."""

    kind: int
    body: bytes


# -- the connection ---------------------------------------------------------------------------

RECV_SIZE = 256 * 1024


class WireConnection:
    """One TCP (or TLS) connection to the broker, driven by a single thread.

    `connect()` blocks until CONNACK; afterwards the socket is non-blocking and
    the owner calls `fill()` when it is readable, `parse()` to turn buffered
    bytes into messages, `queue()` and `flush()` to write.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._in = b""
        self._pos = 0
        self._out = bytearray()
        self._topics: dict[bytes, str] = {}
        self.last_sent = time.monotonic()
        self.last_received = self.last_sent

    @classmethod
    def open(
        cls, host: str, port: int, *, tls: bool = False, timeout: float = 10.0
    ) -> WireConnection:
        sock = socket.create_connection((host, port), timeout=timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if tls:
                context = ssl.create_default_context()
                sock = context.wrap_socket(sock, server_hostname=host)
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def close_gracefully(self, timeout: float) -> None:
        """Half-close, read until the broker closes too (or `timeout`), then close.

        Closing a socket with unread input makes the kernel send a reset, and a
        reset lets the broker's kernel discard what it had not read yet: the
        last PUBACKs and the DISCONNECT. Draining first keeps them.
        """
        deadline = time.monotonic() + timeout
        try:
            self.sock.shutdown(socket.SHUT_WR)
            while (left := deadline - time.monotonic()) > 0:
                self.sock.settimeout(left)
                if not self.sock.recv(65536):
                    break
        except (OSError, ssl.SSLError):
            pass
        finally:
            self.sock.close()

    # -- handshake (blocking) ---------------------------------------------------------------

    def connect(
        self,
        client_id: str,
        *,
        keepalive: int,
        clean_start: bool,
        session_expiry: int,
        receive_maximum: int,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 10.0,
    ) -> ConnAck:
        """Send CONNECT and wait for CONNACK; raise BrokerRefusedError on a failure code.

        Packets the broker sends right after CONNACK (a persistent session's
        queued messages) stay buffered for `parse()`.
        """
        self.sock.settimeout(timeout)
        self.sock.sendall(
            encode_connect(
                client_id,
                keepalive=keepalive,
                clean_start=clean_start,
                session_expiry=session_expiry,
                receive_maximum=receive_maximum,
                username=username,
                password=password,
            )
        )
        deadline = time.monotonic() + timeout
        while True:
            packet = self._next_packet()
            if packet is not None:
                break
            if time.monotonic() > deadline:
                raise ConnectionLostError(f"no CONNACK within {timeout:.0f}s")
            try:
                chunk = self.sock.recv(RECV_SIZE)
            except TimeoutError:
                raise ConnectionLostError(f"no CONNACK within {timeout:.0f}s") from None
            if not chunk:
                raise ConnectionLostError("the broker closed the connection before CONNACK")
            self._in = self._in[self._pos :] + chunk
            self._pos = 0
        first, body = packet
        if first >> 4 != CONNACK:
            raise ProtocolError(f"expected CONNACK, got packet type {first >> 4}")
        if len(body) == 2 and body[1] in _V311_RETURN_CODES:
            raise BrokerRefusedError(body[1], _V311_RETURN_CODES[body[1]])
        ack = decode_connack(body)
        if ack.reason != 0:
            message = reason_name(ack.reason)
            text = ack.properties.get(REASON_STRING)
            if isinstance(text, str) and text:
                message += f": {text}"
            raise BrokerRefusedError(ack.reason, message)
        self.sock.setblocking(False)
        self.last_received = self.last_sent = time.monotonic()
        return ack

    def _next_packet(self) -> tuple[int, bytes] | None:
        buf, at = self._in, self._pos
        if len(buf) - at < 2:
            return None
        try:
            length, start = decode_varint(buf, at + 1)
        except IndexError:
            return None
        end = start + length
        if end > len(buf):
            return None
        self._pos = end
        return buf[at], buf[start:end]

    # -- reading ------------------------------------------------------------------------------

    def fill(self) -> int:
        """Read what the socket holds (one `recv`, more while TLS has bytes pending).

        Returns the number of bytes read (0 when the read would block); raises
        ConnectionLostError at end of stream.
        """
        total = 0
        while True:
            try:
                chunk = self.sock.recv(RECV_SIZE)
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return total
            except OSError as exc:
                raise ConnectionLostError(f"reading from the broker failed: {exc}") from None
            if not chunk:
                raise ConnectionLostError("the broker closed the connection")
            total += len(chunk)
            if self._pos >= len(self._in):
                self._in = chunk
            else:
                self._in = self._in[self._pos :] + chunk
            self._pos = 0
            self.last_received = time.monotonic()
            if not isinstance(self.sock, ssl.SSLSocket) or not self.sock.pending():
                return total

    @property
    def buffered(self) -> int:
        """Bytes received and not yet parsed."""
        return len(self._in) - self._pos

    def parse(
        self,
        limit: int,
        generation: int,
        received_at: datetime,
        out: collections.deque[InboundMessage],
        controls: list[ControlPacket],
    ) -> int:
        """Move up to `limit` buffered PUBLISH packets to `out`, other packets to `controls`.

        Returns how many messages were added. Incomplete packets, and those
        past the limit, stay buffered.
        """
        buf = self._in
        at = self._pos
        size = len(buf)
        topics = self._topics
        append = out.append
        new = tuple.__new__  # what InboundMessage(...) does, without its Python-level __new__
        message = InboundMessage
        added = 0
        while added < limit and size - at >= 2:
            first = buf[at]
            # Remaining length: one byte below 128, else up to four.
            length = buf[at + 1]
            start = at + 2
            if length & 0x80:
                try:
                    length, start = decode_varint(buf, at + 1)
                except IndexError:
                    break
            end = start + length
            if end > size:
                break
            if first >> 4 == PUBLISH:
                qos = (first >> 1) & 0x03
                topic_end = start + 2 + ((buf[start] << 8) | buf[start + 1]) if length >= 2 else end
                # Room for the packet id (QoS > 0) and the properties' length byte.
                if topic_end + (3 if qos else 1) > end or qos == 3:
                    raise ProtocolError("malformed PUBLISH packet")
                raw_topic = buf[start + 2 : topic_end]
                topic = topics.get(raw_topic)
                if topic is None:
                    topic = raw_topic.decode("utf-8", "replace")
                    if len(topics) >= 100_000:
                        topics.clear()
                    topics[raw_topic] = topic
                at = topic_end
                if qos:
                    mid = (buf[at] << 8) | buf[at + 1]
                    at += 2
                else:
                    mid = 0
                props = buf[at]
                if props < 0x80:
                    at += 1 + props
                else:
                    try:
                        props, at = decode_varint(buf, at)
                    except IndexError:
                        raise ProtocolError("malformed PUBLISH packet") from None
                    at += props
                if at > end:
                    raise ProtocolError("malformed PUBLISH packet")
                append(
                    new(
                        message,
                        (topic, buf[at:end], mid, qos, bool(first & 0x01), received_at, generation),
                    )
                )
                added += 1
            else:
                controls.append(ControlPacket(first >> 4, buf[start:end]))
            at = end
        self._pos = at
        if at >= size:
            self._in = b""
            self._pos = 0
        return added

    def has_complete_packet(self) -> bool:
        buf, at = self._in, self._pos
        if len(buf) - at < 2:
            return False
        try:
            length, start = decode_varint(buf, at + 1)
        except IndexError:
            return False
        return start + length <= len(buf)

    # -- writing ------------------------------------------------------------------------------

    def queue(self, data: bytes | bytearray) -> None:
        self._out += data

    @property
    def pending_out(self) -> int:
        return len(self._out)

    def flush(self) -> None:
        """Write as much of the queued output as the socket takes now."""
        while self._out:
            try:
                sent = self.sock.send(self._out)
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return
            except OSError as exc:
                raise ConnectionLostError(f"writing to the broker failed: {exc}") from None
            del self._out[:sent]
            self.last_sent = time.monotonic()

    def flush_blocking(self, timeout: float) -> None:
        """Write all queued output, waiting up to `timeout` seconds."""
        self.sock.settimeout(timeout)
        try:
            if self._out:
                self.sock.sendall(self._out)
                self._out.clear()
                self.last_sent = time.monotonic()
        except OSError as exc:
            raise ConnectionLostError(f"writing to the broker failed: {exc}") from None
        finally:
            self.sock.setblocking(False)
