"""TLS and username/password for fieldlab's MQTT clients, against a real Mosquitto.

The certificates are made with openssl by fieldlab deploy's helpers (a test CA, a
server certificate for 127.0.0.1/localhost, a client certificate, and an unrelated
CA for the negative case), the password file with mosquitto_passwd. A missing binary fails the test
with its install command; nothing is skipped.
"""
from __future__ import annotations

import logging
import shutil
import subprocess
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote

import pytest

from contract.errors import ServiceError
from contract.mqtt import BrokerUrl, connect, wait_published
from fieldlab import deploy
from fieldlab.broker import PrivateMosquitto, free_port, mosquitto_binary

INSTALL = "sudo apt-get install -y mosquitto openssl"
USER, PASSWORD = "edge-01", "pa:ss@w0rd/x"  # characters that need %-encoding in a URL


def _need(name: str) -> str:
    found = mosquitto_binary() if name == "mosquitto" else shutil.which(name)
    if not found:
        pytest.fail(f"{name} not found; install it with: {INSTALL}", pytrace=False)
    return found


def _run(*args: str, cwd: Path) -> None:
    r = subprocess.run(args, cwd=cwd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if r.returncode:
        pytest.fail(f"{' '.join(args)} failed: {r.stderr.strip()}", pytrace=False)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> SimpleNamespace:
    d = tmp_path_factory.mktemp("pki")
    _need("openssl")
    ca, other_ca = deploy.make_ca(d, "ca", days=2), deploy.make_ca(d, "other-ca", days=2, subject="another CA")
    server = deploy.make_cert(d, "server", ca, hostnames=["localhost", "127.0.0.1"], days=2)
    # names only "localhost": connecting to 127.0.0.1 is a host name mismatch
    named = deploy.make_cert(d, "localhost-only", ca, hostnames=["localhost"], days=2)
    client = deploy.make_cert(d, "client", ca, client=True, days=2)
    return SimpleNamespace(dir=d, ca=ca, other_ca=other_ca, server=server, named=named, client=client)


@pytest.fixture(scope="module")
def secure(pki, tmp_path_factory):
    """Mosquitto with a password file, an ACL and a TLS listener: no anonymous clients."""
    d = tmp_path_factory.mktemp("secure-mosquitto")
    _run(_need("mosquitto_passwd"), "-b", "-c", str(d / "passwd"), USER, PASSWORD, cwd=d)
    (d / "acl").write_text(f"user {USER}\ntopic readwrite fieldlab/#\n")
    _need("mosquitto")
    try:
        broker = PrivateMosquitto(workdir=d, password_file=d / "passwd", acl_file=d / "acl",
                                  tls=(pki.ca, *pki.server)).start()
    except ServiceError as e:
        pytest.fail(str(e), pytrace=False)
    yield broker
    broker.stop()


@pytest.fixture(scope="module")
def mtls(pki, tmp_path_factory):
    """Mosquitto whose TLS listener wants a client certificate and presents one naming only localhost."""
    _need("mosquitto")
    try:
        broker = PrivateMosquitto(workdir=tmp_path_factory.mktemp("mtls-mosquitto"), tls=(pki.ca, *pki.named),
                                  require_certificate=True).start()
    except ServiceError as e:
        pytest.fail(str(e), pytrace=False)
    yield broker
    broker.stop()


@pytest.fixture
def clients():
    made = []
    yield made
    for c in made:
        c.disconnect()
        c.loop_stop()


def _url(broker: PrivateMosquitto, user: str | None = USER, password: str | None = PASSWORD, **kw) -> BrokerUrl:
    login = "" if user is None else quote(user, safe="") + ("" if password is None else ":" + quote(password, safe=""))
    return BrokerUrl.parse(f"mqtts://{login}{'@' if login else ''}127.0.0.1:{broker.tls_port}",
                           ca_file=kw.pop("ca_file", str(broker.tls[0])), **kw)


def _round_trip(url: BrokerUrl, clients: list) -> None:
    topic = f"fieldlab/v1/{uuid.uuid4().hex[:10]}/a/l/m/counts"
    got = threading.Event()
    sub = connect(url, subscriptions=[(topic, 1)], on_message=lambda c, u, m: got.set())
    pub = connect(url)
    clients += [sub, pub]
    assert wait_published([pub.publish(topic, b'{"v": 1}', qos=1)], 5)
    assert got.wait(5), "the message published over TLS did not arrive"
    assert sub.fieldlab_last_error is None and pub.fieldlab_last_error is None


def _ours(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "fieldlab.mqtt"]


# -- URLs: parsing, defaults, files, no password in sight

def test_mqtts_url_means_tls_on_port_8883_and_mqtt_stays_1883(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    u = BrokerUrl.parse("mqtts://alice:pw@broker.local", ca_file=str(ca))
    assert (u.host, u.port, u.username, u.password, u.tls, u.ca_file) == ("broker.local", 8883, "alice", "pw", True,
                                                                           str(ca))
    assert BrokerUrl.parse("mqtts://broker.local:9999").port == 9999
    plain = BrokerUrl.parse("mqtt://broker.local")
    assert (plain.port, plain.tls, plain.ca_file) == (1883, False, None)
    assert BrokerUrl("h", 1884, "u", "p") == BrokerUrl.parse("mqtt://u:p@h:1884")  # positional, as before


def test_ca_file_with_plain_mqtt_url_says_use_mqtts(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    with pytest.raises(ServiceError, match=r"ca_file only work over TLS; use an mqtts:// URL"):
        BrokerUrl.parse("mqtt://broker.local:1883", ca_file=str(ca))
    with pytest.raises(ServiceError, match=r"use an mqtts:// URL"):
        BrokerUrl("broker.local", 1883, cert_file=str(ca), key_file=str(ca))


def test_missing_tls_file_is_named(tmp_path):
    missing = tmp_path / "no-such-ca.pem"
    with pytest.raises(ServiceError, match=rf"CA file {missing} .*No such file"):
        BrokerUrl.parse("mqtts://broker.local", ca_file=str(missing))
    cert = tmp_path / "client.crt"
    cert.write_text("x")
    with pytest.raises(ServiceError, match=rf"key file {missing} .*No such file"):
        BrokerUrl.parse("mqtts://broker.local", cert_file=str(cert), key_file=str(missing))


def test_password_never_shown():
    u = BrokerUrl.parse(f"mqtts://{USER}:{quote(PASSWORD, safe='')}@broker.local")
    assert u.password == PASSWORD
    assert str(u) == f"mqtts://{USER}@broker.local:8883"
    assert PASSWORD not in repr(u) and quote(PASSWORD, safe="") not in repr(u)
    with pytest.raises(ServiceError) as e:
        BrokerUrl.parse("mqtt://alice:hunter2@broker.local:notaport")
    assert "hunter2" not in str(e.value) and "alice:***@" in str(e.value)


# -- a real broker

def test_tls_with_username_and_password_round_trip(secure, clients):
    _round_trip(_url(secure), clients)


def test_anonymous_client_is_refused_with_not_authorised(secure):
    with pytest.raises(ServiceError) as e:
        connect(_url(secure, user=None))
    assert str(e.value) == (f"the MQTT broker at mqtts://127.0.0.1:{secure.tls_port} refused the connection: not "
                            "authorised (check username and password: none was given, and this broker does not "
                            "accept anonymous clients)")


def test_wrong_password_is_refused_with_not_authorised(secure):
    with pytest.raises(ServiceError) as e:
        connect(_url(secure, password="wrong-password"))
    assert str(e.value) == (f"the MQTT broker at mqtts://{USER}@127.0.0.1:{secure.tls_port} refused the connection: "
                            f"not authorised (check username and password of user '{USER}')")
    assert "wrong-password" not in str(e.value)


def test_wrong_ca_fails_verification_naming_the_ca_file(secure, pki):
    with pytest.raises(ServiceError) as e:
        connect(_url(secure, ca_file=str(pki.other_ca)))
    msg = str(e.value)
    assert msg.startswith(f"TLS certificate verification failed for the MQTT broker at mqtts://{USER}@127.0.0.1:")
    assert f"CA used: CA file {pki.other_ca}." in msg
    assert "\n" not in msg


def test_host_name_is_verified(mtls, pki, clients):
    """The certificate names only localhost: connecting to 127.0.0.1 fails, even with the right CA."""
    with pytest.raises(ServiceError, match=r"certificate verification failed .*mismatch, certificate is not valid "
                                           r"for '127.0.0.1'; CA used: CA file .*/ca\.crt"):
        connect(BrokerUrl("127.0.0.1", mtls.tls_port, tls=True, ca_file=str(pki.ca),
                          cert_file=str(pki.client[0]), key_file=str(pki.client[1])))
    # ... and by its name it works, with the client's own certificate (this listener requires one)
    _round_trip(BrokerUrl("localhost", mtls.tls_port, tls=True, ca_file=str(pki.ca),
                          cert_file=str(pki.client[0]), key_file=str(pki.client[1])), clients)


def test_missing_client_certificate_is_named(mtls, pki):
    with pytest.raises(ServiceError, match=r"^the MQTT broker at mqtts://localhost:\d+ closed the connection before "
                                           r"accepting it: .*client certificate.* give cert_file and key_file"):
        connect(BrokerUrl("localhost", mtls.tls_port, tls=True, ca_file=str(pki.ca)))


def test_acl_file_is_enforced(secure, clients):
    """The ACL lets the user use fieldlab/# only: a message on another topic never arrives."""
    url, tag = _url(secure), uuid.uuid4().hex[:10]
    allowed, denied = f"fieldlab/v1/{tag}/a/l/m/counts", f"other/{tag}"
    got: list[str] = []
    sub = connect(url, subscriptions=[(allowed, 1), (denied, 1)], on_message=lambda c, u, m: got.append(m.topic))
    pub = connect(url)
    clients += [sub, pub]
    assert wait_published([pub.publish(denied, b"x", qos=1), pub.publish(allowed, b"x", qos=1)], 5)
    deadline = time.monotonic() + 5
    while allowed not in got and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.1)
    assert got == [allowed]


def test_retry_mode_warns_on_every_refusal_and_keeps_the_reason(secure, clients, caplog):
    caplog.set_level(logging.WARNING, logger="fieldlab.mqtt")
    c = connect(_url(secure, password="wrong-password"), retry=True)
    clients.append(c)
    assert c.fieldlab_last_error == (f"the MQTT broker at mqtts://{USER}@127.0.0.1:{secure.tls_port} refused the "
                                     f"connection: not authorised (check username and password of user '{USER}')")
    deadline = time.monotonic() + 5
    while len(_ours(caplog)) < 2 and time.monotonic() < deadline:  # paho retries after 0.2 s, 0.4 s, ...
        time.sleep(0.05)
    assert len(_ours(caplog)) >= 2, "each refused CONNACK must be logged"
    for r in _ours(caplog):
        assert r.levelno == logging.WARNING and "not authorised (check username and password" in r.getMessage()
        assert "wrong-password" not in r.getMessage()


def test_retry_mode_logs_an_unreachable_broker_once_and_clears_the_error_on_connect(clients, caplog, tmp_path):
    caplog.set_level(logging.WARNING, logger="fieldlab.mqtt")
    port = free_port()
    c = connect(BrokerUrl("127.0.0.1", port), retry=True)
    clients.append(c)
    time.sleep(0.8)  # paho tries again after 0.2 and 0.6 s
    assert [r.getMessage() for r in _ours(caplog)] == [
        "MQTT connection failed, retrying in the background (logged once per outage): "
        f"cannot reach the MQTT broker at mqtt://127.0.0.1:{port}: Connection refused"]
    assert c.fieldlab_last_error == f"cannot reach the MQTT broker at mqtt://127.0.0.1:{port}: Connection refused"
    _need("mosquitto")
    broker = PrivateMosquitto(port, workdir=tmp_path).start()
    try:
        deadline = time.monotonic() + 5
        while c.fieldlab_last_error is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert c.fieldlab_last_error is None and c.is_connected()
    finally:
        c.disconnect()
        broker.stop()
