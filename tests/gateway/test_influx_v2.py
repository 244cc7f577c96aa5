"""The InfluxDB 2.x sink (influxdb-client, ``/api/v2/write``) against a real VictoriaMetrics, which speaks that API.

VictoriaMetrics ignores org, bucket and token and stores each field as the metric ``<measurement>_<field>`` with
the line's tags as labels; string fields lose their text (state_name arrives as 0), floats keep about 12
significant digits, and it refuses samples more than two days ahead of its clock, so the lines here carry times
of the last hour.
"""
import asyncio
import time

import numpy as np
import pytest
import urllib3
from influxdb_client.rest import ApiException

from contract import Kind, MachineRef, decode, encode_counts, encode_state, encode_telemetry
from fieldlab.cli import _influx_sink, build_parser, main
from gateway import storage
from gateway.influx import InfluxV1Sink, InfluxV2Sink
from tests.helpers import wait_until

T0_MS = (int(time.time()) - 3600) * 1000  # an hour ago


def v2_sink(vm, **kw) -> InfluxV2Sink:
    return InfluxV2Sink(vm.url, "acme-org", "plant", "a-token", **kw)


def m_lines(first: int, last: int) -> list[str]:
    return [f"m,machine=x v={i}i {T0_MS + i}" for i in range(first, last)]


def series(rows: list[dict]) -> dict[str, dict]:
    """Exported series by metric name (one series per name in these tests)."""
    out = {}
    for s in rows:
        assert s["metric"]["__name__"] not in out, s["metric"]
        out[s["metric"]["__name__"]] = s
    return out


async def test_storage_lines_read_back_as_metrics(victoria):
    sink = v2_sink(victoria, batch_lines=1000)
    await sink.start()
    ref = MachineRef("acme", "hall-1", "line-1", "press-07")
    rng = np.random.default_rng(7)
    ts = T0_MS / 1000 + np.arange(3000) * 0.1
    temp = rng.normal(60, 5, ts.size)
    power = np.where(np.arange(ts.size) % 3 == 0, np.nan, rng.normal(7, 1, ts.size))  # absent in every third
    batches = [(Kind.TELEMETRY, encode_telemetry(ts, {"temperature": temp, "power": power},
                                                 {"temperature": "degC", "power": "kW"})),
               (Kind.STATE, encode_state([ts[0], ts[100]], [4, 15], [0, 101])),
               (Kind.COUNTS, encode_counts([ts[0], ts[50]], [10, 11], [0, 1], "cap", 2.5))]
    for kind, payload in batches:
        sink.accept(storage.batch_lines(ref, kind, decode(kind, payload)))
    assert await wait_until(lambda: sink.stats["written"] == 3000 + 2 + 2), sink.stats
    await sink.stop()
    assert (sink.stats["rejected"], sink.stats["dropped"], sink.stats["retries"]) == (0, 0, 0)

    stamps = np.round(ts * 1000).astype(np.int64)
    got = series(victoria.export('{__name__=~"telemetry_.*"}', samples=3000 + 2000))
    assert got.keys() == {"telemetry_temperature", "telemetry_power"}
    labels = {"site": "acme", "area": "hall-1", "line": "line-1", "machine": "press-07"}
    assert got["telemetry_temperature"]["metric"] == {"__name__": "telemetry_temperature", **labels}
    assert got["telemetry_temperature"]["timestamps"] == stamps.tolist()
    np.testing.assert_allclose(got["telemetry_temperature"]["values"], temp, rtol=1e-11, atol=0)
    have = np.isfinite(power)
    assert got["telemetry_power"]["timestamps"] == stamps[have].tolist()  # absent stays absent, never 0
    np.testing.assert_allclose(got["telemetry_power"]["values"], power[have], rtol=1e-11, atol=0)

    state = series(victoria.export('{__name__=~"state_.*"}', samples=6))
    assert {k: (s["values"], s["timestamps"]) for k, s in state.items()} == {
        "state_state": ([4, 15], stamps[[0, 100]].tolist()),
        "state_reason": ([0, 101], stamps[[0, 100]].tolist()),
        "state_state_name": ([0, 0], stamps[[0, 100]].tolist())}  # "Execute", "Held": the text is lost
    counts = series(victoria.export('{__name__=~"counts_.*", product="cap"}', samples=6))
    assert {k: s["values"] for k, s in counts.items()} == {
        "counts_good": [10, 11], "counts_reject": [0, 1], "counts_ideal_cycle_s": [2.5, 2.5]}
    assert counts["counts_good"]["timestamps"] == stamps[[0, 50]].tolist()
    assert counts["counts_good"]["metric"] == {"__name__": "counts_good", **labels, "product": "cap"}


async def test_server_restart_loses_nothing_within_the_bound(victoria):
    sink = v2_sink(victoria, batch_lines=200, max_backoff_s=0.3, timeout_s=2)
    await sink.start()
    sink.accept(m_lines(0, 500))
    assert await wait_until(lambda: sink.stats["written"] == 500)
    await asyncio.to_thread(victoria.stop)
    sink.accept(m_lines(500, 1500))
    assert await wait_until(lambda: sink.stats["retries"] >= 2)
    assert sink.backlog == 1000 and sink.stats["written"] == 500
    assert sink.stats["last_error"].startswith(f"cannot reach {victoria.url}")
    await asyncio.to_thread(victoria.start)
    assert await wait_until(lambda: sink.stats["written"] == 1500), sink.stats
    await sink.stop()
    assert (sink.stats["dropped"], sink.stats["rejected"], sink.stats["last_error"]) == (0, 0, None)
    (got,) = victoria.export('{__name__="m_v"}', samples=1500)
    assert got["values"] == list(range(1500))  # in order, none twice
    assert got["timestamps"] == [T0_MS + i for i in range(1500)]


async def test_full_buffer_drops_the_oldest_and_counts_them(victoria):
    await asyncio.to_thread(victoria.stop)
    sink = v2_sink(victoria, batch_lines=100, max_lines=300, max_backoff_s=0.2, timeout_s=1)
    await sink.start()
    for k in range(10):
        sink.accept(m_lines(k * 100, k * 100 + 100))
        await asyncio.sleep(0.01)
    assert sink.stats["dropped"] == 700 and sink.backlog == 300
    await asyncio.to_thread(victoria.start)
    assert await wait_until(lambda: sink.backlog == 0)
    await sink.stop()
    assert (sink.stats["written"], sink.stats["dropped"]) == (300, 700)
    (got,) = victoria.export('{__name__="m_v"}', samples=300)
    assert got["values"] == list(range(700, 1000))  # the newest were kept


async def test_refused_lines_are_counted_and_do_not_block_the_rest(victoria):
    """VictoriaMetrics answers 400 for a line longer than its -influx.maxLineSize (256 KiB). Garbage it answers
    with 204 and skips (it only logs it): the sink cannot tell, and counts it as written."""
    sink = v2_sink(victoria, batch_lines=1)
    await sink.start()
    too_long = f'm,machine=x note="{"a" * 300_000}" {T0_MS + 1}'
    sink.accept([f"m,machine=x v=1i {T0_MS}", too_long, "this is no line protocol", f"m,machine=x v=3i {T0_MS + 3}"])
    assert await wait_until(lambda: sink.backlog == 0)
    await sink.stop()
    assert (sink.stats["written"], sink.stats["rejected"], sink.stats["retries"]) == (3, 1, 0)
    assert "too long line" in sink.stats["last_rejection"] and sink.stats["last_error"] is None
    (got,) = victoria.export('{__name__=~"m_.*"}', samples=2)
    assert (got["metric"]["__name__"], got["values"]) == ("m_v", [1, 3])


class _Refusing:
    def __init__(self, error):
        self.error = error

    def write(self, *args, **kwargs):
        raise self.error


@pytest.mark.parametrize("error, outcome, text", [
    (ApiException(status=422, reason="partial write: points beyond retention policy"), "rejected", "retention"),
    (ApiException(status=413, reason="Request Entity Too Large"), "rejected", "Too Large"),
    (ApiException(status=401, reason="unauthorized access"), "retry", "FIELDLAB_INFLUX_TOKEN"),
    (ApiException(status=404, reason='bucket "plant" not found'), "retry", "organisation and the bucket"),
    (ApiException(status=429, reason="Too Many Requests"), "retry", "HTTP 429"),
    (ApiException(status=503, reason="Service Unavailable"), "retry", "HTTP 503"),
    (urllib3.exceptions.ProtocolError("Connection aborted."), "retry", "cannot reach"),
])
def test_influxdb_answers_map_to_reject_or_retry(error, outcome, text):
    """What only a real InfluxDB 2.x answers (VictoriaMetrics has no token, org or bucket)."""
    sink = InfluxV2Sink("http://127.0.0.1:9", "o", "b", "t")
    sink._write_api = _Refusing(error)
    assert sink._post(["m v=1i 1"]) == outcome
    if outcome == "rejected":
        assert (sink.stats["rejected"], sink.stats["last_error"]) == (1, None) and text in sink.stats["last_rejection"]
    else:
        assert sink.stats["rejected"] == 0 and text in sink.stats["last_error"]


@pytest.mark.parametrize("options, env, message", [
    (["--influx-org", "o", "--influx-bucket", "b"], "tok", "without --influx"),
    (["--influx", "http://db:8086", "--influx-org", "o"], "tok", "--influx-bucket is missing"),
    (["--influx", "http://db:8086", "--influx-bucket", "b"], "tok", "--influx-org is missing"),
    (["--influx", "http://db:8086", "--influx-org", "o", "--influx-bucket", "b"], None, "set FIELDLAB_INFLUX_TOKEN"),
    (["--influx", "http://db:8086", "--influx-org", "o", "--influx-bucket", "b"], " ", "set FIELDLAB_INFLUX_TOKEN"),
    (["--influx", "http://me@db:8086", "--influx-org", "o", "--influx-bucket", "b"], "tok", "not a user"),
    (["--influx", "http://db:8086", "--influx-org", "o", "--influx-bucket", "b", "--influx-db", "x"], "tok",
     "--influx-db is for InfluxDB 1.x"),
])
def test_incomplete_v2_options_are_one_line_errors(options, env, message, monkeypatch, capsys):
    monkeypatch.setattr("fieldlab.logs.setup", lambda *a, **kw: None)  # keep pytest's logging as it is
    if env is None:
        monkeypatch.delenv("FIELDLAB_INFLUX_TOKEN", raising=False)
    else:
        monkeypatch.setenv("FIELDLAB_INFLUX_TOKEN", env)
    assert main(["gateway", "--broker", "mqtt://127.0.0.1:9", "--duration", "1", *options]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fieldlab gateway: error: ") and message in err and err.count("\n") == 1, err


def test_options_select_the_sink(monkeypatch):
    monkeypatch.setenv("FIELDLAB_INFLUX_TOKEN", "s3cret-token")
    parse = lambda *o: build_parser().parse_args(["gateway", "--broker", "mqtt://h", *o])  # noqa: E731
    v2 = _influx_sink(parse("--influx", "https://db.local/influx/", "--influx-org", "o", "--influx-bucket", "b"))
    assert isinstance(v2, InfluxV2Sink) and (v2.url, v2.org, v2.bucket) == ("https://db.local:8086/influx", "o", "b")
    assert "s3cret" not in str(v2) and v2._client.token == "s3cret-token"
    v1 = _influx_sink(parse("--influx", "http://db:8086"))
    assert isinstance(v1, InfluxV1Sink) and v1.database == "fieldlab"
    assert _influx_sink(parse()) is None
