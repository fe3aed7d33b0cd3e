// A real Socket.IO 4 server for airlock's end-to-end tests. Usage: node server.js NAME [PORT]
// Listens on 127.0.0.1 on PORT (default a free one) and prints {"port":N} once listening. Every `echo`
// event is acknowledged with this server's name, so a client can tell which server holds
// its session. GET /healthz answers 200 (for active health checks).
"use strict";
const http = require("node:http");
const { Server } = require("socket.io");

const name = process.argv[2] || "server";
const httpServer = http.createServer((req, res) => {
  if (req.url === "/healthz") {
    res.writeHead(200, { "content-type": "text/plain" });
    res.end("ok\n");
  }
  // Anything else under /socket.io/ is the Engine.IO server's; the rest is left to it too
  // (it answers 400 for unknown paths after its own checks).
});
const io = new Server(httpServer);
io.on("connection", (socket) => {
  socket.on("echo", (data, ack) => {
    ack({ server: name, data, transport: socket.conn.transport.name });
  });
});
httpServer.listen(Number(process.argv[3] || 0), "127.0.0.1", () => {
  process.stdout.write(JSON.stringify({ port: httpServer.address().port }) + "\n");
});
