// A socket.io server node for Switchyard's socket.io test: `node server.js NAME` listens on a
// free port, prints `listening PORT`, and answers every `echo` with its own name, so the test
// can tell which node handled each message. It serves the default path and `/loose/`, which
// the test routes to a pool without affinity.
"use strict";
const http = require("http");
const { Server } = require("socket.io");

const name = process.argv[2] || "node";
const httpServer = http.createServer();
for (const path of ["/socket.io/", "/loose/"]) {
  const io = new Server(httpServer, { path, pingInterval: 2000, pingTimeout: 5000 });
  io.on("connection", (socket) => {
    socket.on("echo", (msg, ack) => ack({ server: name, msg, transport: socket.conn.transport.name }));
  });
}
httpServer.listen(0, "127.0.0.1", () => {
  console.log(`listening ${httpServer.address().port}`);
});
