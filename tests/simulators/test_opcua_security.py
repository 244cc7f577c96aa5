"""The simulator's OPC UA server with security (``UaSecurity``, ``fieldlab sim --opcua-security``), from a real
asyncua client: Basic256Sha256 Sign and SignAndEncrypt with a generated certificate kept and reused, exactly one
user let in, anonymous and security None refused.

One secured server serves the module (its start costs ~3-5 s on a busy 2-core machine); each test then costs
well under a second.
"""
from __future__ import annotations

import asyncio
import stat

import pytest
import pytest_asyncio
from asyncua import Client, ua
from asyncua.crypto import uacrypto
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from contract.errors import ServiceError
from fieldlab.broker import free_port
from simulators.machine import DEMO_MACHINES, Machine
from simulators.opcua import NAMESPACE, SessionGuard, SharedServer, SimClock, Simulation, UaSecurity

pytestmark = pytest.mark.asyncio(loop_scope="module")

T0 = 1_800_000_000.0
USER, PASSWORD = "agent", "s3cret-sim"
POLICY = "http://opcfoundation.org/UA/SecurityPolicy#Basic256Sha256"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def secured(tmp_path_factory):
    """cnc-01 behind a server offering Basic256Sha256 Sign and SignAndEncrypt, user 'agent' only; a client
    certificate of the agent's own (not known to the server: any is accepted)."""
    d = tmp_path_factory.mktemp("opcua-security")
    await setup_self_signed_certificate(d / "agent-key.pem", d / "agent-cert.der", "urn:fieldlab:test:agent",
                                        "127.0.0.1", [ExtendedKeyUsageOID.CLIENT_AUTH], {"commonName": "agent"})
    sec = UaSecurity(("sign", "sign-encrypt"), d / "pki", USER, PASSWORD)
    sim = Simulation([Machine(DEMO_MACHINES[0], T0, seed=1)], SimClock(T0, speed=60.0), base_port=free_port(),
                     typed=False, security=sec)
    await sim.start()
    yield sim, sec, d
    await sim.stop()


def client(sim, d, mode: str | None = "SignAndEncrypt", user: str | None = USER, password: str = PASSWORD):
    c = Client(sim.servers[0].endpoint, timeout=5)
    if user:
        c.set_user(user)
        c.set_password(password)
    return c, (f"Basic256Sha256,{mode},{d / 'agent-cert.der'},{d / 'agent-key.pem'}" if mode else None)


async def connect(c: Client, security: str | None) -> None:
    if security:
        await c.set_security_string(security)
    await c.connect()


async def test_offers_only_the_secure_endpoints_with_its_certificate(secured):
    sim, sec, d = secured
    endpoints = await Client(sim.servers[0].endpoint, timeout=5).connect_and_get_server_endpoints()
    assert sorted((e.SecurityPolicyUri, e.SecurityMode) for e in endpoints) == [
        (POLICY, ua.MessageSecurityMode.Sign), (POLICY, ua.MessageSecurityMode.SignAndEncrypt)]  # no None
    cert = x509.load_der_x509_certificate(sec.certificate.read_bytes())
    uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier)
    for e in endpoints:
        assert e.ServerCertificate == sec.certificate.read_bytes()  # the file in the cert dir
        assert e.Server.ApplicationUri == sec.application_uri and uris == [sec.application_uri]
        assert [t.TokenType for t in e.UserIdentityTokens] == [ua.UserTokenType.UserName]  # no anonymous
    assert stat.S_IMODE(sec.private_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(sec.cert_dir.stat().st_mode) == 0o700


@pytest.mark.parametrize("mode", ["Sign", "SignAndEncrypt"])
async def test_the_user_reads_and_calls_methods_in_both_modes(secured, mode):
    sim, _, d = secured
    c, security = client(sim, d, mode)
    await connect(c, security)
    try:
        assert c.security_policy.Mode == getattr(ua.MessageSecurityMode, mode)
        idx = await c.get_namespace_index(NAMESPACE)
        machine = await c.nodes.objects.get_child(f"{idx}:cnc-01")
        assert await (await machine.get_child(f"{idx}:State")).read_value() == sim.servers[0].machine.state
        said = await machine.call_method(f"{idx}:Reset")  # the fault methods work for the user
        assert "cnc-01: reset" in said
    finally:
        await c.disconnect()


@pytest.mark.parametrize("mode, user, password, code", [
    ("SignAndEncrypt", USER, "wrong", "BadUserAccessDenied"),
    ("Sign", "operator", PASSWORD, "BadUserAccessDenied"),  # another user, even with the right password
    ("SignAndEncrypt", None, "", "BadIdentityTokenRejected"),  # anonymous
])
async def test_everyone_else_is_refused(secured, mode, user, password, code):
    sim, _, d = secured
    users = sim.servers[0]._box.users
    before = users.refused
    c, security = client(sim, d, mode, user, password)
    with pytest.raises(ua.UaStatusCodeError) as e:
        await connect(c, security)
    await asyncio.wait_for(c.disconnect(), 2.0)
    assert code in repr(e.value)
    assert users.refused == before + (code == "BadUserAccessDenied")  # counted (and logged) by the server


@pytest.mark.parametrize("user", [USER, None])
async def test_security_none_is_refused_by_the_server_itself(secured, monkeypatch, user):
    """A client sees that no None endpoint is offered; one that asks for a session without security all the
    same (asyncua 2.1's server keeps an unsecured channel open for GetEndpoints) is refused at ActivateSession,
    even with the right password."""
    sim, _, d = secured
    c, _ = client(sim, d, None, user)
    with pytest.raises(ua.UaError, match="No matching endpoints"):
        await connect(c, None)
    await asyncio.wait_for(c.disconnect(), 2.0)
    users = sim.servers[0]._box.users
    before = users.refused
    # take the SignAndEncrypt endpoint's token policies (password in plain text: the channel is to encrypt it)
    monkeypatch.setattr(Client, "find_endpoint", staticmethod(lambda endpoints, mode, uri: next(
        e for e in endpoints if e.SecurityMode == ua.MessageSecurityMode.SignAndEncrypt)))
    c, _ = client(sim, d, None, user)
    with pytest.raises(ua.UaStatusCodeError, match="BadUserAccessDenied|BadIdentityTokenRejected"):
        await connect(c, None)
    await asyncio.wait_for(c.disconnect(), 2.0)
    assert c.security_policy.URI.endswith("#None")  # it really asked without security
    assert users.refused == before + (user is not None)  # anonymous is refused earlier, for its token


async def test_the_guard_lets_in_the_user_only_and_none_only_when_allowed(tmp_path):
    cert = b"client certificate (DER)"
    guard = SessionGuard(UaSecurity(("sign",), tmp_path, USER, PASSWORD))
    assert guard.get_user(None, USER, PASSWORD, cert).name == USER
    assert guard.get_user(None, USER, PASSWORD, b"") is None  # no security
    assert guard.get_user(None, USER, PASSWORD + "x", cert) is None
    assert guard.get_user(None, None, None, cert) is None
    assert guard.refused == 3
    open_too = SessionGuard(UaSecurity(("sign",), tmp_path, USER, PASSWORD, allow_none=True))
    assert open_too.get_user(None, USER, PASSWORD, b"").name == USER
    assert open_too.get_user(None, USER, "wrong", b"") is None
    anonymous = SessionGuard(UaSecurity(("sign-encrypt",), tmp_path))
    assert anonymous.get_user(None, None, None, cert) is not None and anonymous.get_user(None, None, None, b"") is None


async def test_the_certificate_is_kept_and_reused(secured, tmp_path):
    _, sec, _ = secured
    cert, key = sec.certificate.read_bytes(), sec.private_key.read_bytes()
    await sec.ensure_certificate()  # what the next start does
    assert (sec.certificate.read_bytes(), sec.private_key.read_bytes()) == (cert, key)
    # a certificate that names another application (a cert dir copied from elsewhere): remade, key kept
    other = UaSecurity(("sign",), tmp_path / "pki")
    other.cert_dir.mkdir()
    other.private_key.write_bytes(key)
    await setup_self_signed_certificate(other.private_key, other.certificate, "urn:somewhere:else", "127.0.0.1",
                                        [ExtendedKeyUsageOID.SERVER_AUTH], {"commonName": "else"})
    await other.ensure_certificate()
    assert other.private_key.read_bytes() == key
    remade = uacrypto.x509_from_der(other.certificate.read_bytes())
    assert not uacrypto.check_certificate(remade, other.application_uri)  # names this simulator now
    assert stat.S_IMODE(other.private_key.stat().st_mode) == 0o600


async def test_mistakes_are_named(tmp_path):
    with pytest.raises(ServiceError, match="write sign, sign-encrypt or both"):
        UaSecurity(("encrypt",), tmp_path)
    with pytest.raises(ServiceError, match="--opcua-user agent needs a password"):
        UaSecurity(("sign",), tmp_path, USER)
    (tmp_path / "pki").mkdir()
    (tmp_path / "pki" / "server-key.pem").write_text("not a key")
    with pytest.raises(ServiceError, match=r"cannot read the OPC UA certificate or key in .*pki.*delete"):
        await UaSecurity(("sign",), tmp_path / "pki").ensure_certificate()
    (tmp_path / "file").write_text("")
    with pytest.raises(ServiceError, match="choose a writable directory with --opcua-cert-dir"):
        await UaSecurity(("sign",), tmp_path / "file" / "pki").ensure_certificate()


async def test_allow_none_keeps_the_none_endpoint_with_the_user_check(tmp_path):
    """--opcua-allow-none: None as well, last; the password then goes encrypted with the server's certificate."""
    sec = UaSecurity(("sign-encrypt",), tmp_path / "pki", USER, PASSWORD, allow_none=True)
    box = SharedServer("127.0.0.1", free_port(), typed=False, security=sec)
    await box.init("allow-none")
    await box.start()
    try:
        c = Client(box.endpoint, timeout=5)
        modes = [e.SecurityMode for e in await c.connect_and_get_server_endpoints()]
        assert sorted(modes) == [ua.MessageSecurityMode.None_, ua.MessageSecurityMode.SignAndEncrypt]
        c.set_user(USER)
        c.set_password(PASSWORD)
        async with c:
            assert c.security_policy.URI.endswith("#None")
            assert await c.get_namespace_index(NAMESPACE) == box.idx
        anonymous = Client(box.endpoint, timeout=5)
        with pytest.raises(ua.UaStatusCodeError, match="BadIdentityTokenRejected"):
            await anonymous.connect()
        await asyncio.wait_for(anonymous.disconnect(), 2.0)
    finally:
        await box.stop()


async def test_the_command_line_options(tmp_path, monkeypatch):
    from fieldlab.cli import build_parser
    from fieldlab.commands.sim import _opcua_security

    def security(*args):
        return _opcua_security(build_parser().parse_args(["sim", *args]))

    assert security() is None  # the default: security None, exactly as before
    for lone in (["--opcua-user", USER], ["--opcua-allow-none"], ["--opcua-cert-dir", str(tmp_path)]):
        with pytest.raises(ServiceError, match=f"{lone[0]} needs --opcua-security"):
            security(*lone)
    (tmp_path / "pw").write_text(PASSWORD + "\n")
    sec = security("--opcua-security", "Sign-Encrypt, sign", "--opcua-user", USER, "--opcua-password-file",
                   str(tmp_path / "pw"), "--opcua-cert-dir", str(tmp_path / "pki"), "--opcua-allow-none")
    assert sec == UaSecurity(("sign-encrypt", "sign"), tmp_path / "pki", USER, PASSWORD, True)
    monkeypatch.setenv("FIELDLAB_OPCUA_PASSWORD", "from-env")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    sec = security("--opcua-security", "sign", "--opcua-user", USER)
    assert (sec.password, sec.cert_dir) == ("from-env", tmp_path / "state" / "fieldlab" / "opcua-sim")
    monkeypatch.delenv("FIELDLAB_OPCUA_PASSWORD")
    with pytest.raises(ServiceError, match="needs a password"):
        security("--opcua-security", "sign", "--opcua-user", USER)
    with pytest.raises(ServiceError, match="--opcua-password-file needs --opcua-user"):
        security("--opcua-security", "sign", "--opcua-password-file", str(tmp_path / "pw"))
