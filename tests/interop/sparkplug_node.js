// An edge node with one device, written with the Eclipse Tahu lineage npm client (sparkplug-client), for
// tests/interop/test_sparkplug_gateway.py. Argument: JSON {url, group, node, device, clientId, birthTs,
// metrics: {name: [alias, type, value]}}. Commands on stdin, one JSON object a line:
//   {"op": "ddata", "ts": ms, "values": {name: value}}   DDATA with aliases only (no names)
//   {"op": "skip", "n": 3}                                 skip seq numbers (a gap for the host to see)
//   {"op": "ddeath", "ts": ms}  /  {"op": "stop"}          DDEATH  /  NDEATH and disconnect
// Events on stdout, one JSON object a line: birth, ncmd (with rebirth), rebirth, done (after each command).
const readline = require("readline");
const sparkplug = require("sparkplug-client");

const cfg = JSON.parse(process.argv[2]);
const out = (o) => process.stdout.write(JSON.stringify(o) + "\n");
const client = sparkplug.newClient({
  serverUrl: cfg.url, username: null, password: null, groupId: cfg.group, edgeNode: cfg.node,
  clientId: cfg.clientId, publishDeath: true, keepalive: 5,
});
const current = {};
for (const [name, [alias, type, value]] of Object.entries(cfg.metrics)) current[name] = { alias, type, value };
let ts = cfg.birthTs;

function births() {
  client.publishNodeBirth({ timestamp: ts, metrics: [{ name: "Node Control/Rebirth", type: "Boolean", value: false }] });
  client.publishDeviceBirth(cfg.device, {
    timestamp: ts,
    metrics: Object.entries(current).map(([name, m]) => ({ name, alias: m.alias, type: m.type, value: m.value })),
  });
}

client.on("birth", () => { births(); out({ event: "birth" }); });
client.on("error", (e) => out({ event: "error", error: String(e) }));
client.on("ncmd", (p) => {
  const m = (p.metrics || []).find((x) => x.name === "Node Control/Rebirth");
  const rebirth = Boolean(m && m.value === true);
  out({ event: "ncmd", rebirth });
  if (rebirth) { births(); out({ event: "rebirth" }); }
});

readline.createInterface({ input: process.stdin }).on("line", (line) => {
  const c = JSON.parse(line);
  if (c.op === "ddata") {
    ts = c.ts;
    const metrics = Object.entries(c.values).map(([name, v]) => {
      current[name].value = v;
      return { alias: current[name].alias, type: current[name].type, value: v };
    });
    client.publishDeviceData(cfg.device, { timestamp: c.ts, metrics });
  } else if (c.op === "skip") {
    client.seq += c.n;
  } else if (c.op === "ddeath") {
    client.publishDeviceDeath(cfg.device, { timestamp: c.ts });
  } else if (c.op === "stop") {
    client.stop();
  }
  out({ event: "done", op: c.op });
});
