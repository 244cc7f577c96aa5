"""OPC UA source options against a real asyncua server: encryption, user/password, deadband, NodeIds, scaling."""
import asyncio

import pytest
from asyncua import Server, ua
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.user_managers import UserManager
from cryptography.x509.oid import ExtendedKeyUsageOID

from contract import Kind, decode
from contract.errors import ServiceError
from contract.yamlfile import ConfigError
from edge.batcher import Batcher
from edge.opcua import OpcTag, OpcUaSource
from fieldlab.broker import free_port


class OnlyTheAgent(UserManager):
    def get_user(self, iserver, username=None, password=None, certificate=None):
        return User(role=UserRole.User) if (username, password) == ("agent", "s3cret") else None


@pytest.fixture
async def secure_server(tmp_path):
    """A server that only speaks Basic256Sha256 SignAndEncrypt and only lets user 'agent' in."""
    use = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    await setup_self_signed_certificate(tmp_path / "server-key.pem", tmp_path / "server-cert.der",
                                        "urn:fieldlab:test:server", "127.0.0.1", use, {"commonName": "server"})
    await setup_self_signed_certificate(tmp_path / "agent-key.pem", tmp_path / "agent-cert.der",
                                        "urn:freeopcua:client", "127.0.0.1", use, {"commonName": "agent"})
    server = Server(user_manager=OnlyTheAgent())
    await server.init()
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/press/"
    server.set_endpoint(endpoint)
    server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
    server.set_security_IDs(["Username"])
    await server.load_certificate(str(tmp_path / "server-cert.der"))
    await server.load_private_key(str(tmp_path / "server-key.pem"))
    idx = await server.register_namespace("urn:acme:press")
    press = await server.nodes.objects.add_object(idx, "Press")
    nodes = {
        "state": await press.add_variable(idx, "State", ua.Variant(1, ua.VariantType.Int32)),
        "temp": await press.add_variable(idx, "OilTemp", 200.0),
        "good": await press.add_variable(ua.NodeId("Press.Good", idx), f"{idx}:GoodParts",
                                         ua.Variant(0, ua.VariantType.UInt32)),
    }
    async with server:
        yield endpoint, idx, nodes, tmp_path
    

def source(endpoint, idx, d, password="s3cret", security=True):
    tags = [OpcTag("state", "State"), OpcTag("good", f"ns={idx};s=Press.Good"),
            OpcTag("value:oil_temp", "OilTemp", "degC", scale=0.1, deadband=1.0)]  # raw in 0.1 degC
    sec = f"Basic256Sha256,SignAndEncrypt,{d / 'agent-cert.der'},{d / 'agent-key.pem'}" if security else None
    return OpcUaSource(endpoint, namespace="urn:acme:press", root="Press", tags=tags, security=sec,
                       username="agent", password=password)


async def test_encrypted_session_with_password_deadband_and_scaling(secure_server):
    endpoint, idx, nodes, d = secure_server
    src = source(endpoint, idx, d)
    batcher = Batcher("packml", {1: 4, 2: 15})
    await src.start(batcher)
    try:
        for raw in (203.0, 206.0, 250.0, 254.0, 300.0):  # 0.3 and 0.6 degC steps stay inside the 1 degC deadband
            await nodes["temp"].write_value(raw)
            await asyncio.sleep(0.25)
        await nodes["state"].write_value(ua.Variant(2, ua.VariantType.Int32))
        await nodes["good"].write_value(ua.Variant(7, ua.VariantType.UInt32))
        await asyncio.sleep(0.5)
    finally:
        await src.stop()
    batcher.assume("reject", 0)
    out = {kind: decode(kind, payload) for kind, payload in batcher.drain()}
    assert out[Kind.TELEMETRY].signals["oil_temp"].tolist() == [20.0, 25.0, 30.0]
    assert out[Kind.TELEMETRY].units == {"oil_temp": "degC"}
    assert out[Kind.STATE].state.tolist() == [4, 15]  # the press's own codes, mapped to PackML
    assert out[Kind.COUNTS].good.tolist()[-1] == 7  # read through a string NodeId


@pytest.mark.parametrize("password, security, says", [
    ("wrong", True, "check the OPC UA username and password"),
    ("s3cret", False, "cannot connect to the OPC UA server"),  # the server refuses an unencrypted session
])
async def test_refused_connections_say_why(secure_server, password, security, says):
    endpoint, idx, _, d = secure_server
    with pytest.raises(ServiceError) as e:
        await source(endpoint, idx, d, password, security).start(Batcher())
    assert says in str(e.value) and endpoint in str(e.value)


async def test_a_tag_that_is_not_there_is_named(secure_server):
    endpoint, idx, _, d = secure_server
    src = source(endpoint, idx, d)
    src.tags.append(OpcTag("reject", "Counters/Scrap"))
    # a ConfigError: the command exits 78 and systemd stops restarting it (docs/edge-on-a-pi.md)
    with pytest.raises(ConfigError, match=r"no variable Objects/Press/Counters/Scrap for 'reject'"):
        await src.start(Batcher())
    await src.stop()
