"""The fieldlab contract: topic scheme, payload schema and version.

A leaf package: it imports nothing from fieldlab's other packages, and edge
agents, the gateway and the simulators all import it. See docs/contract.md.
"""
from .errors import ContractError
from .payloads import (
    BINARY_MAGIC, MAX_BATCH, PACKML, REASONS, SIMPLE, STATE_MODELS, TS_MAX, TS_MIN, VERSION, Command, CountsBatch,
    OperatorEntry, StateBatch, Status, TelemetryBatch, decode, decode_command, decode_counts, decode_kpi,
    decode_operator, decode_state, decode_status, decode_telemetry, encode_command, encode_counts, encode_kpi,
    encode_operator, encode_state, encode_status, encode_telemetry, encode_telemetry_binary,
)
from .topics import (
    DEADLETTER_TOPIC, LINE, QOS, RETAINED, ROOT, Kind, LineRef, MachineRef, line_subscription, parse_line_topic,
    parse_topic, subscription,
)

__all__ = [
    "BINARY_MAGIC", "ContractError", "MAX_BATCH", "PACKML", "REASONS", "SIMPLE", "STATE_MODELS", "TS_MAX", "TS_MIN",
    "VERSION", "Command", "OperatorEntry", "decode_operator", "encode_operator",
    "CountsBatch", "StateBatch", "Status", "TelemetryBatch", "decode", "decode_command",
    "decode_counts", "decode_kpi", "decode_state", "decode_status", "decode_telemetry",
    "encode_command", "encode_counts", "encode_kpi", "encode_state", "encode_status",
    "encode_telemetry", "encode_telemetry_binary", "DEADLETTER_TOPIC", "QOS", "RETAINED", "ROOT", "Kind", "MachineRef",
    "parse_topic", "subscription", "LINE", "LineRef", "line_subscription", "parse_line_topic",
]
