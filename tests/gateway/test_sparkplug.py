"""gateway/sparkplug.py: the site file's sparkplug section, the adapter's bookkeeping (births, aliases, seq,
deaths), and bad Sparkplug input against the real gateway and Mosquitto: dead-lettered, counted, harmless.
About 5 s, 4 of them the gateway command's test (a process of its own). (The npm reference client against the
gateway: tests/interop/test_sparkplug_gateway.py.)"""
import base64
import json

import pytest

from contract import DEADLETTER_TOPIC, ContractError, Kind, MachineRef, decode, encode_counts, parse_topic
from contract import sparkplug as spb
from contract.yamlfile import ConfigError
from gateway.config import parse
from gateway.http import render_metrics
from gateway.service import Gateway
from gateway.sparkplug import SparkplugIn, parse_settings
from tests.helpers import wait_until

T0_MS = 1_700_092_800_000
BIRTH = [spb.Metric("Press/State", 1, spb.INT32, 4), spb.Metric("GoodCount", 2, spb.UINT64, 10),
         spb.Metric("Scrap", 3, spb.UINT64, 1), spb.Metric("IdealCycleTime", 4, spb.DOUBLE, 2.5),
         spb.Metric("StateModel", 5, spb.STRING, "packml"), spb.Metric("Press/Pressure", 6, spb.FLOAT, 3.5)]


@pytest.mark.parametrize("section, says", [
    ({"group": ["g"]}, "sparkplug.group: unknown key"),
    ({"groups": []}, "sparkplug.groups: list the Sparkplug group ids"),
    ({"groups": ["a/b"]}, "sparkplug.groups"),
    ({"groups": ["g"], "metrics": {"speed": "X"}}, "sparkplug.metrics.speed: unknown role"),
    ({"groups": ["g"], "state_model": "isa88"}, "sparkplug.state_model = 'isa88'"),
])
def test_the_site_file_section_names_the_key_and_the_fix(section, says):
    with pytest.raises(ConfigError, match=says.replace(".", r"\.").replace("(", r"\(")):
        parse({"sparkplug": section}, "site.yaml")


def test_the_site_file_turns_it_on_and_maps_names():
    cfg = parse({"sparkplug": {"groups": "plant1", "site": "acme", "metrics": {"good": "Counters/OK"}}})
    assert cfg.sparkplug.groups == ["plant1"] and cfg.sparkplug.site == "acme"
    assert cfg.sparkplug.names["good"] == ("Counters/OK",)
    assert parse({}).sparkplug is None  # off unless configured


class Adapter:
    """The adapter with the gateway's side replaced by lists: what it ingests, what it publishes."""

    def __init__(self, **settings):
        self.ingested, self.published, self.stats = [], [], {"sparkplug_errors": 0, "sparkplug_rebirths": 0}
        self.spb = SparkplugIn(parse_settings({"groups": ["g"], **settings}),
                               self._ingest,
                               lambda t, p: self.published.append((t, p)), self.stats)

    def _ingest(self, topic, payload):  # as Gateway._ingest: decoded (ContractError if bad), then kept
        decode(parse_topic(topic)[1], payload)
        self.ingested.append((topic, payload))

    def send(self, type_, metrics, seq=None, device="d1", ts_ms=T0_MS):
        topic = spb.topic("g", type_, "n1", device if type_.startswith("D") else None)
        self.spb.on_message(topic, spb.encode_payload(metrics, ts_ms, seq))

    def decoded(self, kind):
        return [decode(kind, p) for t, p in self.ingested if parse_topic(t)[1] is kind]


def test_births_and_alias_only_data_become_contract_batches():
    a = Adapter()
    a.send("NBIRTH", [spb.Metric(spb.BDSEQ, None, spb.UINT64, 7)], 0)
    a.send("DBIRTH", BIRTH, 1)
    a.send("DDATA", [spb.Metric(None, 2, spb.UINT64, 14, T0_MS + 8000), spb.Metric(None, 1, spb.INT32, 15,
                                                                                   T0_MS + 9000)], 2)
    ref = MachineRef("g", "g", "n1", "d1")  # site = group unless configured
    assert {parse_topic(t)[0] for t, _ in a.ingested} == {ref}
    assert [s.status for s in a.decoded(Kind.STATUS)] == ["online"]
    states = a.decoded(Kind.STATE)
    assert [(b.model, b.state.tolist(), b.ts.tolist()) for b in states] == \
        [("packml", [4], [T0_MS / 1000]), ("packml", [15], [T0_MS / 1000 + 9])]
    counts = a.decoded(Kind.COUNTS)
    assert [(b.good.tolist(), b.reject.tolist(), b.ideal_cycle_s) for b in counts] == \
        [([10], [1], 2.5), ([14], [1], 2.5)]  # the reject counter carried over: DDATA sent good only
    assert a.decoded(Kind.TELEMETRY)[0].signals["Press/Pressure"].tolist() == [3.5]
    assert a.published == [] and a.stats["sparkplug_rebirths"] == 0


def test_gaps_unknown_aliases_and_strangers_ask_for_a_rebirth_rate_limited():
    a = Adapter()
    a.send("DDATA", [spb.Metric(None, 2, spb.UINT64, 1)], 5)  # before any NBIRTH: the gateway started late
    a.send("DDATA", [spb.Metric(None, 2, spb.UINT64, 2)], 6)  # asked already: not again within 5 s
    assert [t for t, _ in a.published] == ["spBv1.0/g/NCMD/n1"] and a.ingested == []
    assert spb.is_rebirth_request(spb.decode_payload(a.published[0][1]))
    b = Adapter(rebirth_every="0s")
    b.send("NBIRTH", [spb.Metric(spb.BDSEQ, None, spb.UINT64, 0)], 0)
    b.send("DBIRTH", BIRTH, 1)
    b.send("DDATA", [spb.Metric(None, 99, spb.UINT64, 1)], 2)  # an alias the DBIRTH did not have
    b.send("DDATA", [spb.Metric(None, 2, spb.UINT64, 12)], 7)  # seq 3-6 lost: read, and a rebirth asked for
    assert len(b.published) == 2 and b.stats["sparkplug_rebirths"] == 2
    assert [c.good.tolist() for c in b.decoded(Kind.COUNTS)] == [[10], [12]]


def test_deaths_take_devices_offline_but_a_stale_will_does_not():
    a = Adapter()
    a.send("NBIRTH", [spb.Metric(spb.BDSEQ, None, spb.UINT64, 3)], 0)
    a.send("DBIRTH", BIRTH, 1)
    a.send("DBIRTH", BIRTH, 2, device="d2")
    a.send("DDEATH", [], 3, device="d2")
    a.send("NDEATH", [spb.Metric(spb.BDSEQ, None, spb.UINT64, 2)])  # an earlier session's will: ignored
    statuses = lambda: [(parse_topic(t)[0].machine, decode(Kind.STATUS, p).status) for t, p in a.ingested
                        if parse_topic(t)[1] is Kind.STATUS]
    assert statuses() == [("d1", "online"), ("d2", "online"), ("d2", "offline")]
    a.send("NDEATH", [spb.Metric(spb.BDSEQ, None, spb.UINT64, 3)])
    assert statuses()[3:] == [("d1", "offline"), ("d2", "offline")]


def test_a_bad_state_is_refused_and_the_counters_still_count():
    a = Adapter(state_model="simple")
    a.send("NBIRTH", [spb.Metric(spb.BDSEQ, None, spb.UINT64, 0)], 0)
    with pytest.raises(ContractError, match="Sparkplug DBIRTH of g/n1/d1: state.state.0. = 9: not a state"):
        a.send("DBIRTH", [spb.Metric("State", 1, spb.INT32, 9), spb.Metric("Good", 2, spb.UINT64, 3)], 1)
    assert [c.good.tolist() for c in a.decoded(Kind.COUNTS)] == [[3]]
    assert a.stats["sparkplug_errors"] == 1


async def test_bad_sparkplug_input_is_dead_lettered_counted_and_harms_no_machine(
        mosquitto, site, publisher, recorder):
    dead = recorder(mosquitto.url, DEADLETTER_TOPIC)
    group = f"g{site}"
    gw = Gateway(mosquitto.url, site=site, publish_s=0.1, client_id=f"gw-{site}",
                 config=parse({"sparkplug": {"groups": [group], "site": site}}))
    await gw.start()
    try:
        other = MachineRef(site, "a", "l", "m1")
        publisher(other.topic(Kind.COUNTS), encode_counts([1_700_092_800.0, 1_700_092_810.0], [0, 5], [0, 0]))
        publisher(f"spBv1.0/{group}/NBIRTH/n1", b'{"json": "not protobuf"}')
        publisher(f"spBv1.0/{group}/NBIRTH/n2", spb.encode_payload([spb.Metric(spb.BDSEQ, None, spb.UINT64, 0)],
                                                                   T0_MS, 0))
        publisher(f"spBv1.0/{group}/DBIRTH/n2/has space", spb.encode_payload(BIRTH, T0_MS, 1))
        publisher(f"spBv1.0/other{group}/NBIRTH/n1", b"a group this gateway does not read")
        assert await wait_until(lambda: gw.stats["dead_letters"] == 2 and gw.stats["messages"] == 1)
        rows = gw.tick()
    finally:
        await gw.stop()
    assert [r["machine"] for r in rows] == [other] and rows[0]["good"] == 5
    assert gw.stats["sparkplug_errors"] == 2
    assert "fieldlab_gateway_sparkplug_errors_total 2" in render_metrics(gw).splitlines()
    assert dead.wait_for(lambda r: len(r.json("deadletter")) == 2)
    first, second = dead.json("deadletter")
    assert "not a Sparkplug B protobuf message" in first["error"]
    assert base64.b64decode(first["payload_base64"]) == b'{"json": "not protobuf"}'
    assert "machine <site>/<group>/<edge node>/<device>, so rename the node or device" in second["error"]
    assert json.dumps(second)  # (plain JSON: the binary payload is in base64)


def test_the_gateway_command_reads_a_group_given_with_sparkplug(mosquitto, site, publisher, recorder, port):
    import subprocess
    import sys

    group = f"g{site}"
    ref = MachineRef(site, group, "n1", "d1")
    kpis = recorder(mosquitto.url, ref.topic(Kind.KPI))
    proc = subprocess.Popen([sys.executable, "-m", "fieldlab", "gateway", "--broker",
                             f"mqtt://{mosquitto.url.host}:{mosquitto.url.port}", "--site", site, "--sparkplug", group,
                             "--http-port", str(port), "--state-dir", "none", "--duration", "20"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in proc.stdout:  # "gateway reading ...": printed once it has subscribed
            if "gateway reading" in line:
                break
        publisher(f"spBv1.0/{group}/NBIRTH/n1", spb.encode_payload([spb.Metric(spb.BDSEQ, None, spb.UINT64, 0)],
                                                                   T0_MS, 0))
        publisher(f"spBv1.0/{group}/DBIRTH/n1/d1", spb.encode_payload(BIRTH, T0_MS, 1))
        assert kpis.wait_for(lambda r: r.json("/kpi"), timeout=10)
        assert kpis.json("/kpi")[-1]["good"] == 0 and kpis.json("/kpi")[-1]["state_name"] == "Execute"
    finally:
        proc.terminate()
        proc.wait(10)


async def test_sparkplug_data_survives_a_gateway_restart_without_its_births(mosquitto, site, publisher, tmp_path):
    """What the adapter accepted is journaled as contract messages: a restarted gateway restores it without
    needing the births again (it asks for them at the next DATA)."""
    group = f"g{site}"
    ref = MachineRef(site, group, "n1", "d1")
    config = parse({"sparkplug": {"groups": [group], "site": site}})

    def gateway():
        return Gateway(mosquitto.url, site=site, publish_s=0.1, client_id=f"gw-{site}", config=config,
                       state_dir=tmp_path, checkpoint_s=3600)

    gw = gateway()
    await gw.start()
    try:
        publisher(f"spBv1.0/{group}/NBIRTH/n1", spb.encode_payload([spb.Metric(spb.BDSEQ, None, spb.UINT64, 0)],
                                                                   T0_MS, 0))
        publisher(f"spBv1.0/{group}/DBIRTH/n1/d1", spb.encode_payload(BIRTH, T0_MS, 1))
        publisher(f"spBv1.0/{group}/DDATA/n1/d1", spb.encode_payload([spb.Metric(None, 2, spb.UINT64, 30)],
                                                                     T0_MS + 60_000, 2))
        assert await wait_until(lambda: gw.stats["messages"] == 5)  # status, state, counts, telemetry; counts
    finally:
        await gw.stop()
    gw = gateway()
    await gw.start()
    try:
        rows = gw.tick()
        assert [(r["machine"], r["good"], r["reject"]) for r in rows] == [(ref, 20, 0)]  # 10 -> 30: 20 parts
        publisher(f"spBv1.0/{group}/DDATA/n1/d1", spb.encode_payload([spb.Metric(None, 2, spb.UINT64, 31)],
                                                                     T0_MS + 61_000, 3))
        assert await wait_until(lambda: gw.stats["sparkplug_rebirths"] == 1)  # it does not know the node yet
    finally:
        await gw.stop()


def test_a_state_that_is_not_a_number_is_refused_and_the_rest_is_read():
    a = Adapter()
    a.send("NBIRTH", [spb.Metric(spb.BDSEQ, None, spb.UINT64, 0)], 0)
    a.send("DBIRTH", BIRTH, 1)
    with pytest.raises(ContractError, match="Press/State = 'Running': a state is a whole number, not read"):
        a.send("DDATA", [spb.Metric(None, 1, spb.STRING, "Running"), spb.Metric(None, 2, spb.UINT64, 11)], 2)
    assert [c.good.tolist() for c in a.decoded(Kind.COUNTS)] == [[10], [11]]
