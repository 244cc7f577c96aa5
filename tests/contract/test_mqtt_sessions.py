"""Two clients of ours with one client id (two gateways, an edge agent started twice) take the session over
from each other a few times a second; contract.mqtt.connect says so instead of staying silent."""
import logging
import time
import uuid

from contract.mqtt import COLLISION_CONNECTS, connect


def test_a_second_client_with_the_same_id_is_reported(mosquitto, caplog):
    cid = f"twin-{uuid.uuid4().hex[:8]}"
    one = connect(mosquitto.url, cid, persistent=True)
    two = connect(mosquitto.url, cid, persistent=True)
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not (one.fieldlab_collision or two.fieldlab_collision):
            time.sleep(0.05)
        seen = one if one.fieldlab_collision else two
        assert seen.fieldlab_collision and cid in seen.fieldlab_collision and seen.fieldlab_collisions >= 1
        assert "another process most likely uses its client id" in seen.fieldlab_collision
        assert time.monotonic() - seen.fieldlab_collision_at < 15
        assert any(r.levelno == logging.ERROR and "client id collision" in r.getMessage() for r in caplog.records)
    finally:
        for c in (two, one):
            c.disconnect()
            c.loop_stop()


def test_a_client_alone_is_not_suspected(mosquitto):
    """One client reconnecting now and then (a broker restart) stays below the threshold."""
    connects = []
    c = connect(mosquitto.url, f"alone-{uuid.uuid4().hex[:8]}", persistent=True, on_connect=connects.append)
    try:
        for _ in range(COLLISION_CONNECTS - 2):
            c.reconnect()
            time.sleep(0.3)
        time.sleep(0.5)
        assert len(connects) == COLLISION_CONNECTS - 1  # one short of the threshold, within its window
        assert c.fieldlab_collision is None and c.fieldlab_collisions == 0
    finally:
        c.disconnect()
        c.loop_stop()
