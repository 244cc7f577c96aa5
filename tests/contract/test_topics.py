import pytest

from contract import ContractError, Kind, MachineRef, parse_topic, subscription


def test_topic_round_trip():
    ref = MachineRef("eindhoven", "hall-1", "line-2", "cnc-01")
    topic = ref.topic(Kind.COUNTS)
    assert topic == "fieldlab/v1/eindhoven/hall-1/line-2/cnc-01/counts"
    assert parse_topic(topic) == (ref, Kind.COUNTS)


@pytest.mark.parametrize("topic, why", [
    ("fieldlab/v2/s/a/l/m/counts", "expected fieldlab/v1"),
    ("fieldlab/v1/s/a/l/counts", "expected fieldlab/v1"),
    ("fieldlab/v1/s/a/l/m/bogus", "unknown kind 'bogus'"),
    ("fieldlab/v1/s/a/l/_m/state", "machine '_m'"),
])
def test_bad_topics_are_rejected_with_reason(topic, why):
    with pytest.raises(ContractError, match=why):
        parse_topic(topic)


@pytest.mark.parametrize("name", ["", "a b", "a/b", "a+", "#", "x" * 65])
def test_level_names_that_would_break_topics_are_refused(name):
    with pytest.raises(ContractError):
        MachineRef("s", "a", "l", name)


def test_subscription_filters():
    assert subscription(Kind.KPI, "demo") == "fieldlab/v1/demo/+/+/+/kpi"
    assert subscription() == "fieldlab/v1/+/+/+/+/+"


def test_line_kpi_topic_uses_a_name_no_machine_can_have():
    from contract import LINE, LineRef, line_subscription, parse_line_topic

    line = LineRef("eindhoven", "hall-1", "line-2")
    assert line.topic(Kind.KPI) == f"fieldlab/v1/eindhoven/hall-1/line-2/{LINE}/kpi"
    assert parse_line_topic(line.topic(Kind.KPI)) == line
    assert line == LineRef.of(MachineRef("eindhoven", "hall-1", "line-2", "cnc-01"))
    with pytest.raises(ContractError):
        MachineRef("eindhoven", "hall-1", "line-2", LINE)
    with pytest.raises(ContractError, match="reserved for line KPIs"):
        parse_topic(line.topic(Kind.KPI))
    with pytest.raises(ContractError, match="only kpi"):
        line.topic(Kind.STATE)
    # all KPIs (machines and lines) / only lines
    assert subscription(Kind.KPI, "demo") == "fieldlab/v1/demo/+/+/+/kpi"
    assert line_subscription("demo") == "fieldlab/v1/demo/+/+/_line/kpi"
