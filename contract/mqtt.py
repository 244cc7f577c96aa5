"""The MQTT side of the contract: broker URLs, client set-up, last will, clear connection errors.

Thin on purpose: paho-mqtt does the protocol, its network thread does reconnects
(with back-off) and keeps QoS 1 messages queued while the broker is away.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from .errors import ServiceError

log = logging.getLogger("fieldlab.mqtt")


@dataclass(frozen=True)
class BrokerUrl:
    host: str
    port: int = 1883
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> "BrokerUrl":
        """``mqtt://[user[:password]@]host[:port]`` (port defaults to 1883)."""
        u = urlsplit(url if "://" in url else f"mqtt://{url}")
        if u.scheme != "mqtt" or not u.hostname:
            raise ServiceError(f"broker URL {url!r}: expected mqtt://host:port, e.g. mqtt://localhost:1883")
        try:
            port = u.port or 1883
        except ValueError:
            raise ServiceError(f"broker URL {url!r}: the port must be a number") from None
        return cls(u.hostname, port, unquote(u.username) if u.username else None,
                   unquote(u.password) if u.password else None)

    def __str__(self) -> str:
        return f"mqtt://{self.host}:{self.port}"


def connect(url: BrokerUrl, client_id: str | None = None, *, will: tuple[str, bytes] | None = None,
            on_message=None, on_connect=None, subscriptions: list[tuple[str, int]] = (), timeout: float = 5.0,
            retry: bool = False) -> paho.Client:
    """Create a paho client, connect it and start its network thread; ServiceError if that fails.

    With ``retry``, a broker that cannot be reached yet is not an error: the client keeps trying in
    the background (an edge agent that boots while the Wi-Fi is down still starts, and buffers).

    ``will`` is (topic, payload): published retained with QoS 1 by the broker if we vanish.
    ``on_connect(client)`` runs after every (re)connect. ``subscriptions`` (topic filter, QoS) are made
    on every (re)connect; the first time, ``connect`` returns only once the broker has confirmed them
    (SUBACK), so no message published after it returns is missed.
    """
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"fieldlab-{uuid.uuid4().hex[:8]}",
                         clean_session=True)
    client.max_queued_messages_set(0)  # unbounded in memory; disk-backed buffering lives in the edge agent
    client.reconnect_delay_set(0.2, 5)
    if url.username:
        client.username_pw_set(url.username, url.password)
    if will:
        client.will_set(will[0], will[1], qos=1, retain=True)
    connected = threading.Event()
    subscribed = threading.Event()
    failure: list[str] = []

    def _on_connect(c, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            failure.append(str(reason_code))
            connected.set()
            return
        if subscriptions:
            c.subscribe(list(subscriptions))
        else:
            subscribed.set()
        if on_connect:
            on_connect(c)
        connected.set()

    client.on_connect = _on_connect
    client.on_subscribe = lambda *args: subscribed.set()
    if on_message:
        client.on_message = on_message
    try:
        client.connect(url.host, url.port, keepalive=30)
    except (OSError, ValueError) as e:
        reason = e.strerror or str(e) if isinstance(e, OSError) else str(e)
        if not retry:
            raise ServiceError(f"cannot reach the MQTT broker at {url}: {reason}") from None
        log.warning("MQTT broker not reachable yet, retrying in the background broker=%s reason=%s", url, reason)
        client.connect_async(url.host, url.port, keepalive=30)
        client.loop_start()
        return client
    client.loop_start()
    if not connected.wait(timeout) or failure or not subscribed.wait(timeout):
        client.loop_stop()
        client.disconnect()
        why = failure[0] if failure else f"no answer within {timeout:g} s"
        raise ServiceError(f"the MQTT broker at {url} refused the connection: {why}")
    return client


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
