"""The gateway's HTTP API fuzzed from its own OpenAPI document (``/api/openapi.json``) with schemathesis, against a
running ``fieldlab gateway`` with simulated machines: no 5xx, every status code, content type and body as
documented. And many connections open at once (requests that never finish, event streams) while /healthz
still answers within 1 s; the gateway drops the dawdlers on its own, and its file descriptors come back to
where they were."""
from __future__ import annotations

import socket
import time
import uuid
from collections import Counter
from urllib.parse import unquote

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, seed as fixed_seed, settings, strategies as st
from hypothesis.errors import Unsatisfiable
from requests.adapters import BaseAdapter, HTTPAdapter
from schemathesis import GenerationMode

from fieldlab.broker import free_port
from gateway.http import MAX_STREAMS, REQUEST_DEADLINE_S
from tests.chaos.conftest import FULL, gateway_cmd, http_json, open_fds, poll, rss_kib, sim_cmd

EXAMPLES = 500 if FULL else 60  # generated requests per operation and mode (positive, negative)
HALF_OPEN = 1000 if FULL else 200  # connections whose request never ends
STREAMS = 100  # /api/events streams: the gateway serves MAX_STREAMS (64) and refuses the rest with 503


class _Adapter(BaseAdapter):
    """requests' HTTPAdapter behind a plain adapter. schemathesis counts an HTTPAdapter's pooled connections
    through urllib3 internals (``pools.keys()``) that urllib3-future lacks, and niquests (grafana-client's HTTP
    library, in the [dashboards] extra) installs urllib3-future over urllib3: every request then fails with
    "'TrafficPolice' object has no attribute 'keys'". An adapter that is not an HTTPAdapter is not counted."""

    def __init__(self):
        super().__init__()
        self.inner = HTTPAdapter()

    def send(self, request, **kwargs):
        return self.inner.send(request, **kwargs)

    def close(self) -> None:
        self.inner.close()


def _gateway(broker_port: int, procs, tmp_path, seed: int, machines: int):
    """A gateway and simulated machines; (its process, its base URL) once every machine has KPIs."""
    site, http = f"h{uuid.uuid4().hex[:8]}", free_port()
    gw = procs("gateway", gateway_cmd(broker_port, http, tmp_path / "state", site))
    gw.wait_for("gateway reading")
    procs("sim", sim_cmd(broker_port, site, tmp_path / "ledger.json", 600, machines=machines, seed=seed))
    base = f"http://127.0.0.1:{http}"
    assert poll(lambda: len(http_json(f"{base}/api/machines")[1] or []) == machines, 30), gw.tail()
    return gw, base


@pytest.mark.timeout(900 if FULL else 150)
def test_http_api_fuzzed_from_its_openapi_document(durable_broker, procs, report, tmp_path, seed):
    gw, base = _gateway(durable_broker.port, procs, tmp_path, seed, machines=2)
    ids = [m["id"] for m in http_json(f"{base}/api/machines")[1]]
    schema = schemathesis.openapi.from_url(f"{base}/api/openapi.json")
    session = requests.Session()
    session.adapters.clear()
    session.mount("http://", _Adapter())
    statuses, failures = Counter(), []
    started = time.monotonic()
    for op in (result.ok() for result in schema.get_all_operations()):
        if op.path == "/api/events":  # a stream without end: test_many_open_connections… below
            continue
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            cases = op.as_strategy(generation_mode=mode)
            if "{id}" in op.path:  # the machines that exist too (a generated id names none: 404)
                cases = st.one_of(cases, *(op.as_strategy(generation_mode=mode, path_parameters={"id": i})
                                           for i in ids))

            @fixed_seed(seed)
            @settings(max_examples=EXAMPLES, database=None, deadline=None, suppress_health_check=list(HealthCheck))
            @given(case=cases)
            def call(case):
                response = case.call_and_validate(session=session, base_url=base, timeout=5)
                statuses[f"{op.label} {mode.value} {response.status_code}"] += 1
                # a machine that exists, asked for as the document says (its id as a client encodes it)
                if mode is GenerationMode.POSITIVE and op.method.upper() == "GET" and \
                        unquote(case.path_parameters.get("id", "")) in ids:  # (writes need a login: 401)
                    assert response.status_code == 200, f"GET {case.formatted_path}: {response.status_code}"

            try:
                call()
            except Unsatisfiable:  # nothing of the operation can be made invalid (no parameter, or any string)
                assert mode is GenerationMode.NEGATIVE, op.label
            except (Exception, BaseExceptionGroup) as e:  # schemathesis' FailureGroup is a BaseExceptionGroup
                failures.append(f"{op.label}, {mode.value} data: {e}")
    elapsed = time.monotonic() - started
    print("statuses", dict(sorted(statuses.items())))
    server_errors = {k: n for k, n in statuses.items() if k.endswith(tuple(f" 5{i:02d}" for i in range(100)))}
    health = http_json(f"{base}/healthz")[0]
    report(scenario="HTTP API fuzzed from its OpenAPI document", injected="schemathesis, valid and invalid",
           times=sum(statuses.values()), failures=len(failures), server_errors=sum(server_errors.values()),
           run_s=round(elapsed, 1), recovery_s=None, rss_kib=rss_kib(gw.popen.pid))
    assert not failures, "\n\n".join(failures)
    assert not server_errors, server_errors
    assert sum(statuses.values()) >= EXAMPLES, statuses  # it really asked
    assert health == 200 and gw.popen.poll() is None, gw.tail()


def _status(sock: socket.socket) -> int:
    """The status code of the response arriving on ``sock`` (0 if none within 5 s)."""
    sock.settimeout(5)
    got = b""
    try:
        while b"\r\n" not in got:
            chunk = sock.recv(256)
            if not chunk:
                break
            got += chunk
    except OSError:
        return 0
    parts = got.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


def _event(sock: socket.socket) -> bool:
    """Whether an event of the machines' KPIs arrives on a stream within 5 s."""
    got, deadline = b"", time.monotonic() + 5
    while b"event: machines" not in got and time.monotonic() < deadline:
        try:
            got += sock.recv(65536)
        except OSError:
            break
    return b"event: machines" in got


def _closed_by_server(sock: socket.socket) -> bool:
    sock.settimeout(2)
    try:
        return sock.recv(1) == b""
    except OSError:
        return False


@pytest.mark.timeout(180)
def test_many_open_connections_leave_the_gateway_answering(durable_broker, procs, report, tmp_path, seed):
    gw, base = _gateway(durable_broker.port, procs, tmp_path, seed, machines=1)
    pid, port = gw.popen.pid, int(base.rsplit(":", 1)[1])
    samples = []
    for _ in range(20):  # its least: a checkpoint being written holds a file for a moment
        samples.append(open_fds(pid))
        time.sleep(0.05)
    fds_before = min(samples)
    rss_before = rss_kib(pid)
    half, streams = [], []
    for _ in range(HALF_OPEN):  # a request line and a header, then nothing: the blank line never comes
        half.append(socket.create_connection(("127.0.0.1", port)))
        half[-1].sendall(b"GET /api/machines HTTP/1.1\r\nHost: fuzz\r\n")
    opened = time.monotonic()
    for _ in range(STREAMS):
        streams.append(socket.create_connection(("127.0.0.1", port)))
        streams[-1].sendall(b"GET /api/events HTTP/1.1\r\nHost: fuzz\r\n\r\n")
    codes = [_status(s) for s in streams]
    assert Counter(codes) == {200: MAX_STREAMS, 503: STREAMS - MAX_STREAMS}, Counter(codes)
    events = _event(streams[codes.index(200)])
    latencies = []
    for _ in range(20):
        asked = time.monotonic()
        assert http_json(f"{base}/healthz", timeout=1.0)[0] == 200, gw.tail()
        latencies.append(time.monotonic() - asked)
        time.sleep(0.05)
    fds_open, rss_open = open_fds(pid), rss_kib(pid)
    assert time.monotonic() - opened < REQUEST_DEADLINE_S, "too slow to see the connections held"
    assert fds_open >= fds_before + HALF_OPEN + MAX_STREAMS, (fds_before, fds_open)  # all of them were held
    # the gateway drops the unfinished requests itself, after its deadline, while their clients still wait
    assert poll(lambda: open_fds(pid) <= fds_before + MAX_STREAMS, REQUEST_DEADLINE_S + 10), \
        ("unfinished requests still held", fds_before, open_fds(pid))
    dropped_s = time.monotonic() - opened
    assert all(_closed_by_server(s) for s in half[:20])
    for s in half + streams:
        s.close()
    closed = time.monotonic()
    assert poll(lambda: open_fds(pid) <= fds_before, 15), (fds_before, open_fds(pid))
    back_s = time.monotonic() - closed
    rss_after = rss_kib(pid)
    report(scenario="many open HTTP connections", injected=f"{HALF_OPEN} unfinished requests, {STREAMS} event streams",
           times=HALF_OPEN + STREAMS, healthz_max_s=round(max(latencies), 3), dropped_s=round(dropped_s, 1),
           recovery_s=round(back_s, 2), fds=[fds_before, fds_open, open_fds(pid)],
           rss_kib=[rss_before, rss_open, rss_after])
    assert events, "no event on a live stream"
    assert max(latencies) < 1.0, latencies
    assert http_json(f"{base}/healthz")[0] == 200, gw.tail()
    assert rss_after < rss_before + 50 * 1024, (rss_before, rss_open, rss_after)
