"""A minimal MQTT 3.1.1 publisher for the simulator's gateway connections.

The simulator publishes tens of thousands of QoS 1 messages a second from one
Python process; a general-purpose client spends more per message than the
whole simulated city does. This one does only what a publisher needs:

- CONNECT (clean session, keepalive, optional user name and password, optional
  last will) over TCP or TLS, and a CONNACK check that says what went wrong;
- PUBLISH at QoS 0 or 1 with the retain flag; packets are appended to a buffer
  that goes out in large writes (`flush`, or by itself once it is large);
- QoS 1 packet ids 1..65535 with at most `window` awaiting PUBACK, so an id is
  never reused while the broker may still acknowledge it;
- PUBACKs read in bulk from a non-blocking socket (`poll`, which reads before it
  writes, so a connection the broker closed is found before more goes into it);
- PINGREQ when the connection has been idle for half the keepalive, and a
  connection that does not answer within the keepalive counts as lost;
- after a lost connection it reconnects (for up to `reconnect_timeout`) and
  sends every unacknowledged QoS 1 packet again, with DUP set on those that
  had gone out, before anything new;
- DISCONNECT on `close`, or `drop` to cut the connection without it so the
  broker publishes the will.

Not thread-safe: one thread drives a client.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Self

FLUSH_BYTES = 64 * 1024
"""The buffer goes out by itself once it holds this much."""

_PUBLISH, _PUBACK, _PINGRESP = 0x30, 0x40, 0xD0
_CONNACK_CODES = {
    1: "the broker does not accept MQTT 3.1.1 (unacceptable protocol version)",
    2: "the client identifier was rejected",
    3: "the MQTT service is unavailable",
    4: "bad user name or password",
    5: "not authorised",
}


class PublishError(RuntimeError):
    """The broker cannot be reached or refused the simulator's connection."""


class RefusedError(PublishError):
    """The broker answered CONNECT with a refusal (bad credentials, not authorised…)."""


@dataclass(frozen=True, slots=True)
class Will:
    """The message the broker publishes for a client whose connection drops."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


MAX_PACKET = 268_435_455
"""The largest remaining length MQTT can express."""

MAX_FRUITLESS_RECONNECTS = 5
"""Connections made again in a row that were lost before the broker acknowledged
anything: the broker is refusing what is being resent (too large, say)."""


def _varint(n: int) -> bytes:
    if n > MAX_PACKET:
        raise ValueError(f"an MQTT packet holds at most {MAX_PACKET:,} bytes, not {n:,}")
    out = bytearray()
    while True:
        n, digit = n >> 7, n & 0x7F
        out.append(digit | 0x80 if n else digit)
        if not n:
            return bytes(out)


def _utf8(text: str) -> bytes:
    raw = text.encode()
    if len(raw) > 65535:
        raise ValueError(f"MQTT string too long ({len(raw)} bytes): {text[:40]!r}…")
    return len(raw).to_bytes(2, "big") + raw


def _binary(data: bytes) -> bytes:
    return len(data).to_bytes(2, "big") + data


class _ConnectionLostError(Exception):
    """Internal: the socket failed or the broker closed it; the client reconnects."""


def _wait_for(sock: socket.socket, events: int, timeout: float) -> int:
    """Wait up to `timeout` s for `events` (select.POLLIN, POLLOUT) on `sock`; those that
    came, with POLLIN for a closed or failed socket (reading then finds out)."""
    poller = select.poll()
    poller.register(sock, events)
    try:
        ready = poller.poll(timeout * 1000)
    except OSError as exc:
        raise _ConnectionLostError(exc) from None
    if not ready:
        return 0
    got = ready[0][1]
    if got & (select.POLLERR | select.POLLHUP | select.POLLNVAL):
        got |= select.POLLIN
    return got


class WireClient:
    """One MQTT 3.1.1 connection that publishes (see the module docstring)."""

    def __init__(
        self,
        host: str,
        port: int,
        client_id: str,
        *,
        username: str | None = None,
        password: str | None = None,
        tls: bool | ssl.SSLContext = False,
        keepalive: int = 30,
        window: int = 10_000,
        will: Will | None = None,
        connect_timeout: float = 10.0,
        reconnect_timeout: float = 60.0,
    ) -> None:
        if not 1 <= window <= 65535:
            raise ValueError(f"window must be 1..65535 unacknowledged publishes, not {window}")
        if not 0 < keepalive <= 65535:
            raise ValueError(f"keepalive must be 1..65535 s, not {keepalive}")
        self.host, self.port = host, port
        self.client_id = client_id
        self.keepalive = keepalive
        self.window = window
        self.connect_timeout = connect_timeout
        self.reconnect_timeout = reconnect_timeout
        self._tls: ssl.SSLContext | None = None
        if isinstance(tls, ssl.SSLContext):
            self._tls = tls
        elif tls:
            self._tls = ssl.create_default_context()
        self._connect_packet = self._build_connect(username, password, will)
        self.published = 0
        """PUBLISH packets handed to `publish` (QoS 0 and 1)."""
        self.acknowledged = 0
        """QoS 1 publishes the broker acknowledged (each once, even if sent twice), and
        QoS 0 publishes as soon as they are queued (nothing more is coming for them)."""
        self.reconnects = 0
        self.resent = 0
        self._fruitless = 0  # reconnects since the broker last acknowledged something
        self._pending: dict[int, bytes] = {}  # packet id → PUBLISH packet, in sending order
        self._unsent = 0  # the last this many of `_pending` are still in `_out`
        self._next_id = 0
        self._out = bytearray()
        self._in = bytearray()
        self._topics: dict[str, bytes] = {}
        self._last_send = self._ping_sent = 0.0
        self._closed = False
        self._sock = self._open()

    # --- connection ---------------------------------------------------------

    @property
    def where(self) -> str:
        return f"the MQTT broker at {self.host}:{self.port}"

    def _build_connect(
        self, username: str | None, password: str | None, will: Will | None
    ) -> bytes:
        flags = 0x02  # clean session
        payload = _utf8(self.client_id)
        if will is not None:
            if will.qos not in (0, 1, 2):
                raise ValueError(f"will QoS must be 0, 1 or 2, not {will.qos}")
            flags |= 0x04 | will.qos << 3 | (0x20 if will.retain else 0)
            payload += _utf8(will.topic) + _binary(will.payload)
        if username is not None:
            flags |= 0x80
            payload += _utf8(username)
            if password is not None:
                flags |= 0x40
                payload += _binary(password.encode())
        elif password is not None:
            raise ValueError("MQTT 3.1.1 needs a user name to send a password")
        body = _utf8("MQTT") + bytes([4, flags]) + self.keepalive.to_bytes(2, "big") + payload
        return b"\x10" + _varint(len(body)) + body

    def _open(self) -> socket.socket:
        """Connect, send CONNECT, check CONNACK; a non-blocking socket ready to publish."""
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        except socket.gaierror as exc:
            raise PublishError(f"cannot resolve {self.where}: {exc.strerror}") from None
        except TimeoutError:
            raise PublishError(
                f"cannot connect to {self.where}: no answer within {self.connect_timeout:g} s"
            ) from None
        except OSError as exc:
            raise PublishError(f"cannot connect to {self.where}: {exc.strerror or exc}") from None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._tls is not None:
                try:
                    sock = self._tls.wrap_socket(sock, server_hostname=self.host)
                except ssl.SSLError as exc:
                    raise PublishError(f"TLS with {self.where} failed: {exc}") from None
            sock.sendall(self._connect_packet)
            connack = self._read_connack(sock)
        except TimeoutError:
            sock.close()
            raise PublishError(
                f"{self.where} did not answer the simulator's CONNECT within "
                f"{self.connect_timeout:g} s"
            ) from None
        except PublishError:
            sock.close()
            raise
        except OSError as exc:
            sock.close()
            raise PublishError(
                f"{self.where} closed the connection during CONNECT: {exc.strerror or exc}"
            ) from None
        code = connack[1]
        if code != 0:
            sock.close()
            reason = _CONNACK_CODES.get(code, f"return code {code}")
            hint = "; check the user name and password in the MQTT URL" if code in (4, 5) else ""
            raise RefusedError(
                f"{self.where} refused the simulator's connection as {self.client_id!r}: "
                f"{reason} (CONNACK {code}){hint}"
            )
        sock.setblocking(False)
        self._last_send = time.monotonic()
        self._ping_sent = 0.0
        return sock

    def _read_connack(self, sock: socket.socket) -> bytes:
        data = b""
        while len(data) < 4:
            chunk = sock.recv(4 - len(data))
            if not chunk:
                raise PublishError(
                    f"{self.where} closed the connection before answering CONNECT "
                    f"(is it an MQTT broker? does it allow client {self.client_id!r}?)"
                )
            data += chunk
        if data[0] != 0x20 or data[1] != 2:
            raise PublishError(
                f"{self.where} answered CONNECT with packet type {data[0] >> 4}, not CONNACK"
            )
        return data[2:]

    def _reconnect(self) -> None:
        """Connect again and queue every unacknowledged publish before anything new."""
        with contextlib.suppress(OSError):
            self._sock.close()
        deadline = time.monotonic() + self.reconnect_timeout
        delay = 0.1
        while True:
            try:
                self._sock = self._open()
                break
            except PublishError as exc:
                refused = isinstance(exc, RefusedError)
                if refused or time.monotonic() + delay > deadline:
                    self._closed = True
                    within = "" if refused else f" within {self.reconnect_timeout:g} s"
                    raise PublishError(
                        f"lost the connection to {self.where} and could not reconnect{within} "
                        f"({len(self._pending)} publishes unacknowledged): {exc}"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
        self.reconnects += 1
        self._fruitless = self._fruitless + 1 if self._pending else 0
        if self._fruitless > MAX_FRUITLESS_RECONNECTS:
            self._sock.close()
            self._closed = True
            raise PublishError(
                f"{self.where} closed the connection {self._fruitless} times in a row before "
                f"acknowledging anything ({len(self._pending)} publishes unacknowledged); "
                "see the broker's log (a message over its size limit?)"
            )
        self._in.clear()
        self._out.clear()
        packets = list(self._pending.values())
        sent = len(packets) - self._unsent
        for k, packet in enumerate(packets):
            if k < sent:  # it went out before: DUP
                self._out += bytes((packet[0] | 0x08,))
                self._out += memoryview(packet)[1:]
                self.resent += 1
            else:
                self._out += packet
        self._unsent = len(packets)

    # --- publishing ---------------------------------------------------------

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """Queue one PUBLISH; it goes out with the next `flush` (or by itself when large).

        At QoS 1 with `window` publishes unacknowledged, waits for PUBACKs first.
        """
        self._check_open()
        head = self._topics.get(topic)
        if head is None:
            if not topic or "+" in topic or "#" in topic or "\x00" in topic:
                raise ValueError(f"{topic!r} is not a topic one can publish to")
            if len(self._topics) >= 100_000:
                self._topics.clear()
            head = self._topics[topic] = _utf8(topic)
        remaining = len(head) + len(payload)
        first = _PUBLISH | 0x01 if retain else _PUBLISH
        if qos == 1:
            pending = self._pending
            if len(pending) >= self.window:
                self._wait_below(self.window)
            mid = self._next_id % 65535 + 1
            while mid in pending:
                mid = mid % 65535 + 1
            self._next_id = mid
            remaining += 2
            first |= 0x02
            packet = b"".join(
                (
                    bytes((first, remaining))
                    if remaining < 128
                    else bytes((first, remaining & 0x7F | 0x80, remaining >> 7))
                    if remaining < 16384
                    else bytes((first,)) + _varint(remaining),
                    head,
                    mid.to_bytes(2, "big"),
                    payload,
                )
            )
            pending[mid] = packet
            self._unsent += 1
        elif qos == 0:
            packet = b"".join(
                (
                    bytes((first, remaining))
                    if remaining < 128
                    else bytes((first,)) + _varint(remaining),
                    head,
                    payload,
                )
            )
            self.acknowledged += 1
        else:
            raise ValueError(f"this publisher sends QoS 0 or 1, not {qos}")
        self.published += 1
        out = self._out
        out += packet
        if len(out) >= FLUSH_BYTES:
            self.flush()

    def _check_open(self) -> None:
        if self._closed:
            raise PublishError(f"the connection to {self.where} is closed")

    @property
    def in_flight(self) -> int:
        """QoS 1 publishes not yet acknowledged."""
        return len(self._pending)

    def flush(self) -> None:
        """Write everything queued, reading PUBACKs meanwhile; reconnect if the link is lost."""
        self._check_open()
        while True:
            try:
                self._write()
                return
            except _ConnectionLostError:
                self._reconnect()

    def poll(self, timeout: float = 0.0) -> int:
        """Flush, read the PUBACKs that arrived (waiting up to `timeout` for some), keep the
        connection alive. Returns how many publishes were acknowledged."""
        self._check_open()
        before = self.acknowledged
        while True:
            try:
                # Reading first finds a connection the broker closed before more is
                # written into it.
                self._read(0.0)
                self._write()
                if timeout > 0:
                    self._read(timeout)
                self._keep_alive()
                return self.acknowledged - before
            except _ConnectionLostError:
                self._reconnect()
                timeout = 0.0

    def wait_acknowledged(self, timeout: float = 30.0) -> bool:
        """Flush and wait until every QoS 1 publish is acknowledged; False on timeout."""
        deadline = time.monotonic() + timeout
        self.flush()
        while self._pending:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.poll(min(left, 0.5))
        return True

    def _wait_below(self, limit: int) -> None:
        while len(self._pending) >= limit:
            self.poll(0.5)

    # --- the socket ---------------------------------------------------------

    def _write(self) -> None:
        out = self._out
        if not out:
            return
        sock = self._sock
        data = memoryview(out)
        try:
            sent = 0
            stalled_since = 0.0
            while sent < len(data):
                try:
                    sent += sock.send(data[sent:])
                    stalled_since = 0.0
                except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                    # The broker is behind: take its PUBACKs while its buffer drains.
                    now = time.monotonic()
                    stalled_since = stalled_since or now
                    if now - stalled_since > 2 * self.keepalive:
                        raise _ConnectionLostError("the broker stopped reading") from None
                    if _wait_for(sock, select.POLLIN | select.POLLOUT, 1.0) & select.POLLIN:
                        self._read(0.0)
                except OSError as exc:
                    raise _ConnectionLostError(exc) from None
        finally:
            data.release()
        out.clear()
        self._unsent = 0
        self._last_send = time.monotonic()

    def _read(self, timeout: float) -> None:
        sock = self._sock
        if (
            timeout > 0
            and not (isinstance(sock, ssl.SSLSocket) and sock.pending())
            and not _wait_for(sock, select.POLLIN, timeout)
        ):
            return
        buf = self._in
        while True:
            try:
                chunk = sock.recv(262144)
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                break
            except OSError as exc:
                raise _ConnectionLostError(exc) from None
            if not chunk:
                raise _ConnectionLostError("the broker closed the connection")
            buf += chunk
            if len(chunk) < 262144:
                break
        if buf:
            self._parse()

    def _parse(self) -> None:
        buf = self._in
        pending = self._pending
        end = len(buf)
        i = 0
        acked = 0
        while i + 2 <= end:
            kind = buf[i]
            if kind == _PUBACK and buf[i + 1] == 2:  # the common case, 4 bytes
                if i + 4 > end:
                    break
                if pending.pop(buf[i + 2] << 8 | buf[i + 3], None) is not None:
                    acked += 1
                i += 4
                continue
            length, shift, j = 0, 0, i + 1
            while j < end:
                byte = buf[j]
                length |= (byte & 0x7F) << shift
                shift += 7
                j += 1
                if not byte & 0x80:
                    break
            else:
                break
            if j + length > end:
                break
            if kind & 0xF0 == _PINGRESP:
                self._ping_sent = 0.0
            elif (
                kind & 0xF0 == _PUBACK
                and length >= 2
                and pending.pop(buf[j] << 8 | buf[j + 1], None) is not None
            ):
                acked += 1
            # A publisher receives nothing else it needs to act on.
            i = j + length
        del buf[:i]
        self.acknowledged += acked
        if acked:
            self._ping_sent = 0.0  # the broker is alive
            self._fruitless = 0

    def _keep_alive(self) -> None:
        now = time.monotonic()
        if self._ping_sent and now - self._ping_sent > self.keepalive:
            raise _ConnectionLostError(f"no answer to PINGREQ within {self.keepalive} s")
        if now - self._last_send >= self.keepalive / 2:
            self._out += b"\xc0\x00"
            if not self._ping_sent:
                self._ping_sent = now
            self._write()

    # --- the end ------------------------------------------------------------

    def close(self, timeout: float = 30.0) -> bool:
        """Wait (up to `timeout`) for every PUBACK, then DISCONNECT. True if all came."""
        if self._closed:
            return not self._pending
        try:
            done = self.wait_acknowledged(timeout)
        except PublishError:
            done = False
        with contextlib.suppress(OSError):
            self._sock.setblocking(True)
            self._sock.settimeout(2.0)
            self._sock.sendall(b"\xe0\x00")
        with contextlib.suppress(OSError):
            self._sock.close()
        self._closed = True
        return done

    def drop(self) -> None:
        """Cut the connection without DISCONNECT: the broker publishes the will."""
        with contextlib.suppress(OSError):
            self._sock.close()
        self._closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.close()
        else:
            self.drop()
