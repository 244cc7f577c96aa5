// A Sparkplug B host written with the npm packages (mqtt, and sparkplug-payload of the Eclipse Tahu lineage),
// for tests/interop/test_sparkplug_edge.py. Argument: JSON {url, group, hostId}. Prints every message of the
// group, decoded by sparkplug-payload, as one JSON line {event: "message", topic, seq, metrics: [...]}.
// Commands on stdin: {"op": "state", "online": true|false} (the retained STATE of hostId),
// {"op": "rebirth", "node": "..."} (an NCMD Node Control/Rebirth). Each answered by {event: "done"}.
const readline = require("readline");
const mqtt = require("mqtt");
const sparkplug = require("sparkplug-payload").get("spBv1.0");

const cfg = JSON.parse(process.argv[2]);
const out = (o) => process.stdout.write(JSON.stringify(o) + "\n");
const plain = (v) => (v !== null && typeof v === "object" && typeof v.toNumber === "function" ? v.toNumber() : v);
const client = mqtt.connect(cfg.url, { clientId: `host-${cfg.hostId}`, clean: true });

client.on("connect", () => {
  client.subscribe(`spBv1.0/${cfg.group}/#`, { qos: 1 }, () => out({ event: "subscribed" }));
});
client.on("message", (topic, message) => {
  if (topic.split("/")[2] === "NCMD") return;
  const p = sparkplug.decodePayload(message);
  out({
    event: "message", topic, seq: plain(p.seq), timestamp: plain(p.timestamp),
    metrics: (p.metrics || []).map((m) => ({
      name: m.name, alias: plain(m.alias), type: m.type, value: plain(m.value), timestamp: plain(m.timestamp),
    })),
  });
});

readline.createInterface({ input: process.stdin }).on("line", (line) => {
  const c = JSON.parse(line);
  const done = () => out({ event: "done", op: c.op });
  if (c.op === "state") {
    client.publish(`spBv1.0/STATE/${cfg.hostId}`, JSON.stringify({ online: c.online, timestamp: Date.now() }),
      { qos: 1, retain: true }, done);
  } else if (c.op === "rebirth") {
    const payload = sparkplug.encodePayload({
      timestamp: Date.now(), metrics: [{ name: "Node Control/Rebirth", type: "Boolean", value: true }],
    });
    client.publish(`spBv1.0/${cfg.group}/NCMD/${c.node}`, Buffer.from(payload), { qos: 0 }, done);
  }
});
