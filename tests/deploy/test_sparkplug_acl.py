"""The generated ACL lets the gateway read Sparkplug B and ask edge nodes for a rebirth (NCMD), and nothing
more of Sparkplug. A real Mosquitto on the generated files (the stack of test_secure_broker.py); about 2 s."""
from tests.deploy.test_secure_broker import Listener, _publish, _url, plant_file, stack  # noqa: F401 (fixtures)


def test_the_gateway_reads_sparkplug_and_sends_only_rebirth_requests(stack):  # noqa: F811
    gateway = Listener(_url(stack, "gateway"), "spBv1.0/#")
    try:
        # refused first, then allowed, on one connection: when the allowed one arrives, a refused one would have
        _publish(_url(stack, "gateway-2"), "spBv1.0/plant1/DDATA/edge1/press1", "spBv1.0/plant1/NCMD/edge1")
        assert gateway.next() == "spBv1.0/plant1/NCMD/edge1"
        _publish(_url(stack, "node-red"), "spBv1.0/plant1/NCMD/edge1", "spBv1.0/plant1/NCMD/edge1/x")
        _publish(_url(stack, "gateway-2"), "spBv1.0/plant1/NCMD/edge2")
        assert gateway.next() == "spBv1.0/plant1/NCMD/edge2"  # a viewer sends no commands
    finally:
        gateway.close()
