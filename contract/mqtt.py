"""The MQTT side of the contract: broker URLs, client set-up, last will, clear connection errors.

Thin on purpose: paho-mqtt does the protocol, its network thread does reconnects
(with back-off) and keeps QoS 1 messages queued while the broker is away.
"""
from __future__ import annotations

import logging
import re
import ssl
import threading
import time
import uuid
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from .errors import ServiceError

log = logging.getLogger("fieldlab.mqtt")

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
_FILES = (("ca_file", "CA file"), ("cert_file", "certificate file"), ("key_file", "key file"))
# MQTT 5 reason codes; paho maps the MQTT 3.1.1 CONNACK codes 4 and 5 onto them
_NOT_AUTHORISED = {134, 135}  # Bad user name or password, Not authorized
# this many connections within this time: another client uses our client id (see connect())
COLLISION_WINDOW_S, COLLISION_CONNECTS = 10.0, 5


@dataclass(frozen=True)
class BrokerUrl:
    """Where the broker is and how to log in. ``str()`` never shows the password.

    ``tls`` (an ``mqtts://`` URL) encrypts the connection and verifies the broker's certificate and
    host name against ``ca_file`` (PEM; None: the system's CA certificates). ``cert_file`` and
    ``key_file`` (PEM, key unencrypted) are the client's own certificate, for brokers that require one.
    ``port`` None means the scheme's default: 1883, or 8883 with TLS.
    """
    host: str
    port: int | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    def __post_init__(self):
        if self.port is None:
            object.__setattr__(self, "port", DEFAULT_PORTS["mqtts" if self.tls else "mqtt"])
        given = [name for name, _ in _FILES if getattr(self, name)]
        if given and not self.tls:
            raise ServiceError(f"broker {self}: {' and '.join(given)} only work over TLS; "
                               f"use an mqtts:// URL, e.g. mqtts://{self.host}:8883")
        if self.key_file and not self.cert_file:
            raise ServiceError(f"broker {self}: key_file {self.key_file} needs the client certificate too (cert_file)")
        if self.password is not None and not self.username:
            raise ServiceError(f"broker {self}: a password needs a username")

    @classmethod
    def parse(cls, url: str, *, ca_file: str | None = None, cert_file: str | None = None,
              key_file: str | None = None) -> "BrokerUrl":
        """``mqtt[s]://[user[:password]@]host[:port]``; the port defaults to 1883, with ``mqtts`` (TLS) to 8883.

        ``ca_file``, ``cert_file`` and ``key_file`` need ``mqtts``; each must be a readable file.
        """
        full = url if "://" in url else f"mqtt://{url}"
        shown = _hide_password(full)  # error messages must not leak the password either
        u = urlsplit(full)
        if u.scheme not in DEFAULT_PORTS or not u.hostname:
            raise ServiceError(f"broker URL {shown!r}: expected mqtt://host:port or mqtts://host:port (TLS), "
                               f"e.g. mqtt://localhost:1883")
        try:
            port = u.port or DEFAULT_PORTS[u.scheme]
        except ValueError:
            raise ServiceError(f"broker URL {shown!r}: the port must be a number") from None
        b = cls(u.hostname, port, unquote(u.username) if u.username else None,
                unquote(u.password) if u.password else None, tls=u.scheme == "mqtts",
                ca_file=ca_file, cert_file=cert_file, key_file=key_file)
        b.check_files()
        return b

    def check_files(self) -> None:
        """ServiceError naming the file if the CA, certificate or key file is missing or unreadable."""
        for name, what in _FILES:
            path = getattr(self, name)
            if not path:
                continue
            try:
                with open(path, "rb"):
                    pass
            except OSError as e:
                raise ServiceError(f"{what} {path} for the MQTT broker at {self}: {e.strerror or e}; "
                                   f"check the path ({name}) and that this user may read it") from None

    def __str__(self) -> str:
        user = f"{self.username}@" if self.username else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{self.host}:{self.port}"


def _hide_password(url: str) -> str:
    return re.sub(r"^([^:/]+://[^/@:]*):[^/]*@", r"\1:***@", url)


class _BufferedSocket:
    """The broker's socket, read in chunks of up to 256 KiB instead of paho's few tiny reads per packet.

    paho reads each packet with 3-5 ``recv`` calls (1 byte of type, 1-4 bytes of length, the rest).
    This wrapper serves them from one larger read; ``pending()`` (which paho asks of TLS sockets) tells
    paho's loop that bytes are still buffered, so it reads them without waiting in ``select``. Anything
    else (send, fileno, setblocking, close) is the socket's own. Errors of a read (BlockingIOError, the
    TLS want-read) come only from the socket itself, and paho handles them as before.
    """
    __slots__ = ("_sock", "_buf", "_pos", "_error")
    CHUNK = 262144

    def __init__(self, sock) -> None:
        self._sock, self._buf, self._pos, self._error = sock, b"", 0, None

    def fill(self) -> None:
        """Read what the socket holds into the empty buffer, so that whole packets can be taken from it at
        once (_Client._fast_publishes). Nothing to read: nothing happens. Any other error is kept for the
        next recv, where paho meets it as it would have."""
        if self._pos < len(self._buf) or self._error is not None:
            return
        try:
            data = self._sock.recv(self.CHUNK)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return
        except OSError as e:
            self._error = e
            return
        if data:
            self._buf, self._pos = data, 0
        else:  # the broker closed the connection
            self._error = EOFError()

    def recv(self, n: int) -> bytes:
        if self._error is not None:
            e, self._error = self._error, None
            if isinstance(e, EOFError):
                return b""  # what the socket said: paho takes it as the connection lost
            raise e
        pos, buf = self._pos, self._buf
        if pos < len(buf):  # a short answer is fine: paho asks again for the rest
            self._pos = pos + n
            return buf[pos:pos + n]
        data = self._sock.recv(max(n, self.CHUNK))
        if len(data) <= n:
            self._buf, self._pos = b"", 0
            return data
        self._buf, self._pos = data, n
        return data[:n]

    def buffered(self) -> int:
        return max(len(self._buf) - self._pos, 0)

    def pending(self) -> int:
        inner = getattr(self._sock, "pending", None)  # TLS: bytes decrypted but not read yet
        return self.buffered() + (inner() if inner else 0)

    def send(self, data) -> int:
        return self._sock.send(data)

    def fileno(self) -> int:
        return self._sock.fileno()

    def __getattr__(self, name):
        return getattr(self._sock, name)


class _Message(paho.MQTTMessage):
    """An incoming message, as paho makes it, minus the MQTTMessageInfo (a lock and a condition) that paho
    builds for every message and that only an outgoing message needs: made when asked for."""
    __slots__ = ()

    @property
    def info(self) -> paho.MQTTMessageInfo:
        return paho.MQTTMessageInfo(self.mid)


def _publish_at(buf: bytes, pos: int, end: int):
    """(command byte, start of the topic, end of the packet) of a whole MQTT 3.1.1 PUBLISH with QoS 0 or 1
    at ``buf[pos:end]``; None for anything else (another packet, QoS 2, a packet not all read yet, or one
    that does not parse): paho's own reader takes it from there, and reports what is wrong."""
    cmd = buf[pos]
    if cmd & 0xF0 != 0x30 or cmd & 0x04:  # not a PUBLISH, or QoS 2 (or the invalid QoS 3)
        return None
    i, length, shift = pos + 1, 0, 0
    while True:  # the remaining length: 1-4 bytes of 7 bits, least significant first
        if i >= end or shift > 21:
            return None
        byte = buf[i]
        i += 1
        length |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            break
    stop = i + length
    if stop > end or i + 2 > stop:
        return None
    topic_len = (buf[i] << 8) | buf[i + 1]
    if topic_len == 0 or i + 2 + topic_len + (2 if cmd & 0x02 else 0) > stop:  # (an empty topic: paho's error)
        return None
    return cmd, i, stop


class _Client(paho.Client):
    """paho's client plus ``fieldlab_last_error``, and hooks that see why a (re)connect attempt failed.

    paho's network thread swallows the exception of a failed background reconnect; overriding the
    public ``reconnect()`` is the one place that still sees it. A connection the broker closes after
    the TLS handshake but before its CONNACK (TLS 1.3 sends "certificate required" then) shows only
    in paho's log, so ``on_log`` is set while a connection attempt is under way, and unset once
    connected (paho formats a log line per packet while it is set).
    """
    fieldlab_last_error: str | None = None
    fieldlab_collision: str | None = None  # why we think another client uses our client id, as last seen
    fieldlab_collision_at = -float("inf")  # time.monotonic() of that
    fieldlab_collisions = 0
    _fieldlab_on_fail = None
    _fieldlab_on_log = None

    # Per message, paho's network thread made 3-5 recv calls, one select, and a wake-up byte to itself
    # through a socket pair for the PUBACK it queues. The three overrides below cut that to a share of
    # one recv and one select per 256 KiB, and one send for all the PUBACKs due (bench/bench_broker.py;
    # docs/PERFORMANCE.md). They lean on paho 2.x internals (_create_socket, _sockpairW, _out_packet),
    # which every test against a real Mosquitto exercises, TLS included.
    def _create_socket(self):
        return _BufferedSocket(super()._create_socket())

    def loop_read(self, max_packets: int = 1):
        """Read on while whole packets are buffered (paho reads one per select). Queuing the PUBACKs needs no
        wake-up byte here: this is the network thread, and its next loop sees them (want_write)."""
        wake, self._sockpairW = self._sockpairW, None
        try:
            rc, n = self._fast_publishes(fill=True)
            sock = self._sock
            if not rc and (not n or isinstance(sock, _BufferedSocket) and sock.buffered()):
                # nothing taken yet (paho then meets what is there: an error, the end, a partial packet), or a
                # packet that is not a whole QoS 0/1 PUBLISH is next: paho's own reader, then on as before
                rc = super().loop_read(max_packets)
                for _ in range(1000):
                    if not rc:
                        rc, _ = self._fast_publishes()
                    sock = self._sock
                    if rc or not isinstance(sock, _BufferedSocket) or not sock.buffered():
                        break
                    rc = super().loop_read(max_packets)
        finally:
            if self._sockpairW is None:  # unless a reconnect made a new pair meanwhile
                self._sockpairW = wake
        return rc

    fieldlab_fast_messages = 0  # messages delivered by _fast_publishes (tests check it is used)
    _fieldlab_filtered = False

    def message_callback_add(self, sub, callback) -> None:
        self._fieldlab_filtered = True  # per-topic callbacks: paho's own dispatch from now on
        super().message_callback_add(sub, callback)

    def _fast_publishes(self, fill: bool = False) -> tuple:
        """Deliver the whole QoS 0/1 PUBLISH packets in the read buffer to ``on_message`` and queue their
        PUBACKs, as paho's _packet_read and _handle_publish do, without their per-packet cost (a dict of
        read state, 4-5 recv calls, a topic-filter walk, a lock and a condition per message: most
        of a subscriber's CPU per message, docs/PERFORMANCE.md). It stops at the first packet that is
        anything else, or not all read yet, and leaves it to paho. Only for the plain case paho would
        handle the same way: MQTT 3.1.1, no per-topic callbacks, no manual acks, no logging. ``fill``: read
        the socket first if the buffer is empty. (rc, messages delivered).

        Two differences from paho remain, neither met by our callers: callbacks and options changed from
        another thread take effect after the buffered packets (paho looks per packet), and a message whose
        callback raises (suppress_exceptions off) counts as read, where paho would read it again on the next
        manual ``loop()``."""
        sock = self._sock
        on_message = self._on_message
        if (on_message is None or type(sock) is not _BufferedSocket or self._in_packet["command"]
                or self._protocol == paho.MQTTv5 or self._manual_ack or self._fieldlab_filtered
                or self._on_log is not None or self._logger is not None):
            return paho.MQTT_ERR_SUCCESS, 0
        if fill:
            sock.fill()
        buf, pos = sock._buf, sock._pos
        end, rc, n = len(buf), paho.MQTT_ERR_SUCCESS, 0
        while pos < end and not rc:
            found = _publish_at(buf, pos, end)
            if found is None:
                break
            cmd, i, pos = found
            sock._pos = pos  # read, as far as paho is concerned, before its callback runs
            msg = _Message.__new__(_Message)
            start = i + 2 + ((buf[i] << 8) | buf[i + 1])
            msg._topic, msg.qos, msg.retain, msg.dup = buf[i + 2:start], (cmd >> 1) & 3, bool(cmd & 1), bool(cmd & 8)
            if msg.qos:
                msg.mid, start = (buf[start] << 8) | buf[start + 1], start + 2
            else:
                msg.mid = 0
            msg.payload, msg.properties, msg.state, msg.timestamp = buf[start:pos], None, 0, paho.time_func()
            n += 1
            with self._in_callback_mutex:
                try:
                    on_message(self, self._userdata, msg)
                except Exception as err:
                    self._easy_log(paho.MQTT_LOG_ERR, "Caught exception in on_message: %s", err)
                    if not self.suppress_exceptions:
                        raise
            if msg.qos:
                rc = self._send_puback(msg.mid)
            if self._sock is not sock:  # the callback disconnected or reconnected: the buffer is not ours now
                break
        if n:
            self.fieldlab_fast_messages += n
            with self._msgtime_mutex:
                self._last_bytes_received = paho.time_func()
        return (self._loop_rc_handle(rc) if rc else rc), n

    def loop_write(self):
        """Send all PUBACKs that are due with one send (paho sends each packet on its own)."""
        out = self._out_packet

        def fresh_ack(packet) -> bool:  # a whole PUBACK, not yet partly sent
            return packet["command"] & 0xF0 == paho.PUBACK and packet["pos"] == 0

        if len(out) > 1 and fresh_ack(out[0]) and fresh_ack(out[1]):
            acks = []
            while out and fresh_ack(out[0]) and len(acks) < 1000:
                acks.append(out.popleft())
            packet = b"".join(a["packet"] for a in acks)
            out.appendleft({**acks[0], "packet": packet, "to_process": len(packet), "pos": 0})
        return super().loop_write()

    def reconnect(self):
        if self._fieldlab_on_log is not None and self.on_log is None:
            self.on_log = self._fieldlab_on_log
        try:
            return super().reconnect()
        except OSError as e:
            if self._fieldlab_on_fail is not None:
                self._fieldlab_on_fail(e)
            raise


def _unreachable(url: BrokerUrl, e: BaseException) -> str:
    """One line for a connection attempt that failed before MQTT (socket or TLS)."""
    if isinstance(e, ssl.SSLCertVerificationError):
        ca = f"CA file {url.ca_file}" if url.ca_file else "the system's default CA certificates (no ca_file given)"
        why = (e.verify_message or str(e)).strip().rstrip(".")
        return (f"TLS certificate verification failed for the MQTT broker at {url}: {why}; CA used: {ca}. "
                f"The broker's certificate must be signed by that CA and name the host {url.host!r}")
    if url.tls and isinstance(e, (ssl.SSLError, ConnectionResetError)):
        why = getattr(e, "reason", None) or e.strerror or str(e)
        return (f"TLS handshake with the MQTT broker at {url} failed: {why}; "
                f"is port {url.port} the broker's TLS (mqtts) listener?")
    why = e.strerror or str(e) if isinstance(e, OSError) else str(e)
    return f"cannot reach the MQTT broker at {url}: {why}"


def _dropped(url: BrokerUrl, reason: str) -> str:
    """One line for a connection the broker closed before answering the CONNECT."""
    reason = re.sub(r"^\[SSL: [A-Z0-9_]+\] |\s*\(_ssl\.c:\d+\)$", "", reason.strip())
    hint = ""
    if url.tls and "certificate required" in reason:
        hint = "; the broker requires a client certificate: give cert_file and key_file"
    elif url.tls and ("alert" in reason or "EOF" in reason):  # the alert may be lost in the close
        hint = (f"; did the broker reject the client certificate {url.cert_file}? It must be signed by a CA the broker "
                f"trusts" if url.cert_file else
                "; does the broker require a client certificate? Then give cert_file and key_file")
    return f"the MQTT broker at {url} closed the connection before accepting it: {reason}{hint}"


def _refused(url: BrokerUrl, reason_code) -> str:
    """One line for a CONNACK that refused us."""
    if getattr(reason_code, "value", None) in _NOT_AUTHORISED:
        hint = (f"check username and password of user {url.username!r}" if url.username else
                "check username and password: none was given, and this broker does not accept anonymous clients")
        return f"the MQTT broker at {url} refused the connection: not authorised ({hint})"
    return f"the MQTT broker at {url} refused the connection: {reason_code}"


def _no_passphrase(url: BrokerUrl):
    def ask():  # called by OpenSSL only for an encrypted key; without it, OpenSSL would prompt on the terminal
        raise ServiceError(f"key file {url.key_file or url.cert_file} for the MQTT broker at {url} is encrypted "
                           f"with a passphrase; give an unencrypted key and protect it with file permissions "
                           f"(chmod 600)")
    return ask


def _tls_files_error(url: BrokerUrl, e: ssl.SSLError) -> str:
    why = e.reason or str(e)
    if url.ca_file:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(url.ca_file)
        except ssl.SSLError as ca_error:
            return (f"CA file {url.ca_file} for the MQTT broker at {url} holds no usable PEM certificate: "
                    f"{ca_error.reason or ca_error}")
    files = f"certificate file {url.cert_file}" + (f" and key file {url.key_file}" if url.key_file else "")
    if why == "KEY_VALUES_MISMATCH":
        return f"{files} for the MQTT broker at {url} do not belong together (the key is not the certificate's)"
    return f"{files} for the MQTT broker at {url}: cannot load them as a PEM certificate and key ({why})"


def connect(url: BrokerUrl, client_id: str | None = None, *, will: tuple[str, bytes] | None = None,
            on_message=None, on_connect=None, subscriptions: list[tuple[str, int]] = (), timeout: float = 5.0,
            retry: bool = False, persistent: bool = False) -> paho.Client:
    """Create a paho client, connect it and start its network thread; ServiceError if that fails.

    With ``url.tls`` the connection is TLS, with the broker's certificate and host name verified
    against ``url.ca_file`` (or the system's CAs), and ``url.cert_file``/``key_file`` as the client's
    certificate if given. ``url.username``/``password`` log in. Errors are one line each: a missing
    file, "not authorised (check username and password …)", "TLS certificate verification failed …
    CA used: …", "cannot reach …".

    With ``retry``, a broker that cannot be reached yet, or that refuses us, is not an error: the
    client keeps trying in the background (an edge agent that boots while the Wi-Fi is down still
    starts, and buffers). A broker that cannot be reached is logged once per outage (per distinct
    reason); a refused CONNACK (wrong password, not authorised) is logged as a warning every time.

    The returned client has ``fieldlab_last_error``: why the latest connection attempt failed (the
    same one-line text as the errors above), or None; cleared on every successful (re)connect. It
    is set by paho's network thread and meant for status reports (heartbeats, health checks).

    ``will`` is (topic, payload): published retained with QoS 1 by the broker if we vanish; (topic, payload,
    False) for one that is not retained (Sparkplug B's NDEATH).
    ``on_connect(client)`` runs after every (re)connect. ``subscriptions`` (topic filter, QoS) are made
    on every (re)connect; the first time, ``connect`` returns only once the broker has confirmed them
    (SUBACK), so no message published after it returns is missed.

    Two processes with one client id take the session over from each other, in turn, a few times a
    second; MQTT 3.1.1 gives no reason, and each then sees only its own messages. So the connections
    are counted: ``COLLISION_CONNECTS`` within ``COLLISION_WINDOW_S`` set ``fieldlab_collision`` (a
    sentence naming the client id), ``fieldlab_collision_at`` and ``fieldlab_collisions``, and log an
    error once a minute. A broker that restarts gives one reconnect, not five in ten seconds.

    ``persistent`` asks the broker to keep our session (MQTT 3.1.1 clean session = 0): while we are
    away (restarting, or reconnecting after a broker restart) it queues the QoS 1 messages of our
    subscriptions and hands them over when we are back. It needs a stable ``client_id`` that no other
    client uses, and a broker with ``persistence true`` to survive the broker's own restart.
    """
    if persistent and not client_id:
        raise ValueError("a persistent session needs a stable client_id")
    client = _Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"fieldlab-{uuid.uuid4().hex[:8]}",
                     clean_session=not persistent)
    client.max_queued_messages_set(0)  # unbounded in memory; disk-backed buffering lives in the edge agent
    client.reconnect_delay_set(0.2, 5)
    if url.tls:
        url.check_files()
        try:
            client.tls_set(ca_certs=url.ca_file, certfile=url.cert_file, keyfile=url.key_file,
                           keyfile_password=_no_passphrase(url))
        except ssl.SSLError as e:
            raise ServiceError(_tls_files_error(url, e)) from None
        except OSError as e:  # the file vanished since check_files
            raise ServiceError(f"cannot read the TLS files for the MQTT broker at {url}: {e}") from None
        client.tls_insecure_set(False)  # the default; said here so nobody "fixes" an error by turning it off
    if url.username:
        client.username_pw_set(url.username, url.password)
    if will:
        client.will_set(will[0], will[1], qos=1, retain=will[2] if len(will) > 2 else True)
    connected = threading.Event()
    subscribed = threading.Event()
    failure: list[str] = []
    logged: set[str] = set()  # reasons already logged in this outage
    connects: list[float] = []  # times of the recent connections (a client id collision)
    background = [retry]  # log refusals (instead of raising them) once connect() handed the client over

    def _on_fail(e: OSError) -> None:  # paho's thread, or connect() below
        why = _unreachable(url, e)
        client.fieldlab_last_error = why
        if why not in logged:
            logged.add(why)
            log.warning("MQTT connection failed, retrying in the background (logged once per outage): %s", why)

    def _on_log(c, userdata, level, buf: str) -> None:  # paho's thread, while (re)connecting
        if level != paho.MQTT_LOG_ERR or c.is_connected() or not buf.startswith("failed to receive on socket: "):
            return
        why = _dropped(url, buf.partition(": ")[2])
        c.fieldlab_last_error = why
        failure[:] = [why]
        if background[0] and why not in logged:
            logged.add(why)
            log.warning("MQTT connection failed, retrying in the background (logged once per outage): %s", why)
        connected.set()

    def _on_connect(c, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            why = _refused(url, reason_code)
            c.fieldlab_last_error = why
            failure[:] = [why]
            if background[0]:
                log.warning("%s; retrying in the background", why)
            connected.set()
            return
        c.fieldlab_last_error = None
        logged.clear()
        _count_connect(c, url, connects)
        if c.on_log is _on_log:
            c.on_log = None
        if subscriptions:
            c.subscribe(list(subscriptions))
        else:
            subscribed.set()
        if on_connect:
            on_connect(c)
        connected.set()

    client.on_connect = _on_connect
    client._fieldlab_on_log = _on_log
    client.on_subscribe = lambda *args: subscribed.set()
    if on_message:
        client.on_message = on_message
    try:
        client.connect(url.host, url.port, keepalive=30)
    except OSError as e:  # also TLS errors: ssl.SSLError is an OSError
        if not retry:
            raise ServiceError(_unreachable(url, e)) from None
        _on_fail(e)
        client._fieldlab_on_fail = _on_fail
        client.connect_async(url.host, url.port, keepalive=30)
        client.loop_start()
        return client
    except ValueError as e:  # an invalid host or port: retrying cannot help
        raise ServiceError(_unreachable(url, e)) from None
    client._fieldlab_on_fail = _on_fail
    client.loop_start()
    answered = connected.wait(timeout)
    if retry and (failure or not answered):
        # refused (logged, in fieldlab_last_error) or no CONNACK yet from a slow broker: the caller (an
        # edge agent that buffers) starts anyway, and paho keeps trying with back-off
        if not answered:
            client.fieldlab_last_error = f"the MQTT broker at {url} did not answer within {timeout:g} s"
            log.warning("%s; retrying in the background", client.fieldlab_last_error)
        background[0] = True
        return client
    if not answered or failure or not subscribed.wait(timeout):
        client.loop_stop()
        client.disconnect()
        if failure:
            raise ServiceError(failure[0])
        hint = "" if url.tls else f" (if port {url.port} is a TLS listener, use mqtts://)"
        raise ServiceError(f"the MQTT broker at {url} refused the connection: no answer within {timeout:g} s{hint}")
    background[0] = True
    return client


def _count_connect(client: _Client, url: BrokerUrl, connects: list[float]) -> None:
    """Note a connection; too many too quickly mean another client with our client id (see connect())."""
    now = time.monotonic()
    connects[:] = [t for t in connects if now - t < COLLISION_WINDOW_S] + [now]
    if len(connects) < COLLISION_CONNECTS:
        return
    first = now - client.fieldlab_collision_at > 60.0
    client.fieldlab_collision = (
        f"the MQTT broker at {url} dropped this client's connection {len(connects) - 1} times in "
        f"{COLLISION_WINDOW_S:g} s right after accepting it: another process most likely uses its client id "
        f"{client._client_id.decode(errors='replace')!r} (each takes the session over from the other); give each "
        f"process its own client id (or the broker drops it for another reason: a message over its size limit, "
        f"its ACL; see the broker's log)")
    client.fieldlab_collision_at = now
    client.fieldlab_collisions += 1
    if first:
        log.error("client id collision: %s", client.fieldlab_collision)


def wait_published(infos, timeout: float = 10.0) -> bool:
    """Wait until the broker acknowledged these QoS 1 publishes; False on timeout."""
    deadline = time.monotonic() + timeout
    for info in infos:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        try:
            info.wait_for_publish(left)
        except (RuntimeError, ValueError):
            return False
        if not info.is_published():
            return False
    return True
