// socket.io clients for Switchyard's socket.io test:
//   node client.js URLS CLIENTS MESSAGES TRANSPORTS [PATH]
// URLS is a comma-separated list (client i uses URLS[i % n]); TRANSPORTS is `default`
// (polling, then upgrade), `polling` or `websocket`. Clients keep cookies (withCredentials),
// as a browser does, so the proxy's affinity cookie comes back on every request. Prints one
// JSON line: per client, the nodes that answered, the messages acknowledged, the transport
// at the end and any errors.
"use strict";
const { io } = require("socket.io-client");

const [urls, clients, messages, transports, path] = process.argv.slice(2);
const opts = {
  path: path || "/socket.io/",
  withCredentials: true,
  reconnection: false,
  forceNew: true,
  timeout: 10000,
};
if (transports !== "default") opts.transports = [transports];

function once(emitter, event, ms) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`no ${event} within ${ms} ms`)), ms);
    emitter.once(event, (v) => { clearTimeout(t); resolve(v); });
  });
}

async function run(i) {
  const list = urls.split(",");
  const socket = io(list[i % list.length], opts);
  const out = { servers: [], acked: 0, transport: null, errors: [] };
  socket.on("connect_error", (e) => out.errors.push(`connect_error: ${e.message}`));
  socket.on("disconnect", (why) => { if (why !== "io client disconnect") out.errors.push(`disconnect: ${why}`); });
  try {
    await once(socket, "connect", 15000);
    const n = Number(messages);
    for (let k = 0; k < n; k++) {
      if (transports === "default" && k === Math.floor(n / 2) && socket.io.engine.transport.name !== "websocket") {
        // Half the messages over polling, the rest once the session has upgraded.
        await once(socket.io.engine, "upgrade", 10000);
      }
      const r = await socket.timeout(10000).emitWithAck("echo", `${i}-${k}`);
      if (r.msg !== `${i}-${k}`) throw new Error(`echo of ${i}-${k} came back as ${r.msg}`);
      out.servers.push(r.server);
      out.acked++;
    }
    out.transport = socket.io.engine.transport.name;
  } catch (e) {
    out.errors.push(String(e.message || e));
  }
  socket.disconnect();
  return out;
}

(async () => {
  const results = await Promise.all(Array.from({ length: Number(clients) }, (_, i) => run(i)));
  console.log(JSON.stringify(results));
  process.exit(0);
})();
