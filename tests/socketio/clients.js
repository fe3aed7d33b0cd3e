// Real socket.io-client clients, with default transports (long-polling, then the upgrade
// to WebSocket), for airlock's end-to-end tests. Usage: node clients.js '<json options>'
//   url              the Socket.IO endpoint (through airlock)
//   count            clients, run at once
//   events           acknowledged `echo` events per client (half before the upgrade)
//   withCredentials  keep cookies between requests (Node's cookie jar in engine.io-client)
//   headers          extra request headers; "{i}" in a value becomes the client's number
//   timeoutMs        per client, from start to the last ack
// Prints one JSON line: {"clients":[{"i","servers","transport","error"}...]}.
"use strict";
const { io } = require("socket.io-client");

const opts = JSON.parse(process.argv[2]);
const events = opts.events ?? 4;

function headersFor(i) {
  const out = {};
  for (const [k, v] of Object.entries(opts.headers ?? {})) out[k] = String(v).replaceAll("{i}", i);
  return out;
}

function ack(socket, data) {
  return socket.timeout(5000).emitWithAck("echo", data);
}

async function upgraded(socket, deadline) {
  while (socket.io.engine.transport.name !== "websocket") {
    if (Date.now() > deadline) throw new Error("never upgraded to websocket");
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function run(i) {
  const deadline = Date.now() + (opts.timeoutMs ?? 15000);
  const socket = io(opts.url, {
    withCredentials: !!opts.withCredentials,
    extraHeaders: headersFor(i),
    reconnection: false,
    timeout: 5000,
  });
  const servers = new Set();
  try {
    await new Promise((resolve, reject) => {
      socket.once("connect", resolve);
      socket.once("connect_error", (e) => reject(new Error(`connect_error: ${e.message}`)));
    });
    for (let n = 0; n < events; n++) {
      if (n === Math.floor(events / 2)) await upgraded(socket, deadline);
      const reply = await ack(socket, { i, n });
      if (reply.data.i !== i || reply.data.n !== n) throw new Error("echo mismatch");
      servers.add(reply.server);
    }
    await upgraded(socket, deadline);
    return { i, servers: [...servers], transport: socket.io.engine.transport.name, error: null };
  } catch (e) {
    return { i, servers: [...servers], transport: socket.io.engine?.transport?.name ?? null, error: String(e.message || e) };
  } finally {
    socket.disconnect();
  }
}

(async () => {
  const ids = [...Array(opts.count).keys()];
  const clients = await Promise.all(ids.map(run));
  process.stdout.write(JSON.stringify({ clients }) + "\n");
  process.exit(0);
})();
