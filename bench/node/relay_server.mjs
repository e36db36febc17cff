// Reference relay for bench/relay_load.py --against node|both: a minimal Node socket.io 4 server
// with the relay semantics of docs/protocol.md that the load generator uses (create, join,
// message, connection, leave, disconnect), the same ack and error shapes, the same ids and the
// same payload checks (opaque strings, at most MAX_PAYLOAD UTF-8 bytes). No TURN, no media relay,
// no rate limiting, no logging: a lower bound on what a Node server doing this job costs.
//
//   node bench/node/relay_server.mjs PORT
//
// Listens on 127.0.0.1:PORT (WebSocket and long-polling, like ours), prints one line
// "listening http://127.0.0.1:PORT" when ready, exits 0 on SIGTERM/SIGINT.

import { randomBytes } from "node:crypto";
import { createServer } from "node:http";
import { Server } from "socket.io";

const PORT = Number.parseInt(process.argv[2] ?? "", 10);
if (!(PORT > 0 && PORT < 65536)) {
  console.error("usage: node relay_server.mjs PORT");
  process.exit(2);
}
const MAX_PAYLOAD = 65536; // limits.max_payload_bytes default
const CAPACITY = Number.parseInt(process.env.RELAY_CAPACITY ?? "50", 10);

const ROOM_ID = /^[A-Za-z0-9_-]{22}$/;
const PEER_ID = /^[A-Za-z0-9_-]{16}$/;
const newId = (bytes) => randomBytes(bytes).toString("base64url");

/** room id -> {host: peer id, peers: Map(peer id -> {socket, meta, resume})} */
const rooms = new Map();

class Refused extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

function str(payload, key, { optional = false } = {}) {
  const v = payload[key];
  if (v === undefined && optional) return undefined;
  if (typeof v !== "string") throw new Refused("bad_request", `'${key}' must be a string`);
  if (Buffer.byteLength(v, "utf8") > MAX_PAYLOAD) {
    throw new Refused("payload_too_large", `'${key}' is over ${MAX_PAYLOAD} bytes`);
  }
  return v;
}

function roomOf(socket, payload) {
  const id = payload.room;
  if (typeof id !== "string" || !ROOM_ID.test(id)) {
    throw new Refused("bad_request", "'room' is not a room id");
  }
  const peer = socket.data.rooms.get(id);
  if (peer === undefined) throw new Refused("not_in_room", "you are not in this room");
  return { id, peer, room: rooms.get(id) };
}

function ackFields(id, peer, room) {
  return {
    ok: true, room: id, peer, host: room.host, resume: room.peers.get(peer).resume,
    locked: false, capacity: CAPACITY,
    peers: [...room.peers].filter(([p]) => p !== peer).map(([p, v]) => ({ peer: p, meta: v.meta })),
    iceServers: [], iceTransportPolicy: "relay", iceExpires: 0,
    media: { uploadKbps: 0, minVideoKbps: 0 }, mediaRelay: [], mediaRelayFrom: {},
  };
}

function enter(socket, id, room, meta) {
  const peer = newId(12);
  room.peers.set(peer, { socket, meta, resume: newId(16) });
  socket.data.rooms.set(id, peer);
  socket.join(id);
  return peer;
}

function leave(socket, id, reason) {
  const peer = socket.data.rooms.get(id);
  const room = rooms.get(id);
  if (peer === undefined || room === undefined) return;
  socket.data.rooms.delete(id);
  room.peers.delete(peer);
  socket.leave(id);
  if (room.peers.size === 0) {
    rooms.delete(id); // rooms.empty_grace_seconds: 0, as the bench runs ours
    return;
  }
  io.to(id).emit("left", { room: id, peer, reason });
  if (room.host === peer) {
    room.host = room.peers.keys().next().value; // the oldest remaining peer
    io.to(id).emit("host", { room: id, peer: room.host });
  }
}

const handlers = {
  create(socket, p) {
    const meta = str(p, "meta", { optional: true }) ?? "";
    const id = newId(16);
    const room = { host: null, peers: new Map() };
    rooms.set(id, room);
    const peer = enter(socket, id, room, meta);
    room.host = peer;
    return ackFields(id, peer, room);
  },
  join(socket, p) {
    const id = p.room;
    if (typeof id !== "string" || !ROOM_ID.test(id)) {
      throw new Refused("bad_request", "'room' is not a room id");
    }
    const meta = str(p, "meta", { optional: true }) ?? "";
    const room = rooms.get(id);
    if (room === undefined) throw new Refused("room_not_found", "no such room");
    if (socket.data.rooms.has(id)) throw new Refused("already_in_room", "already in this room");
    if (room.peers.size >= CAPACITY) {
      throw new Refused("room_full", `this room is full (${room.peers.size} of ${CAPACITY})`);
    }
    const peer = enter(socket, id, room, meta);
    socket.to(id).emit("joined", { room: id, peer, meta, resumed: false });
    return ackFields(id, peer, room);
  },
  message(socket, p) {
    const { id, peer } = roomOf(socket, p);
    const data = str(p, "data");
    socket.to(id).emit("message", { room: id, from: peer, data });
    return { ok: true };
  },
  connection(socket, p) {
    const { id, peer, room } = roomOf(socket, p);
    const data = str(p, "data");
    const to = p.to;
    const target = typeof to === "string" && PEER_ID.test(to) ? room.peers.get(to) : undefined;
    if (target === undefined || to === peer) {
      throw new Refused("peer_not_found", "no such peer in this room");
    }
    target.socket.emit("connection", { room: id, from: peer, data });
    return { ok: true };
  },
  leave(socket, p) {
    const { id } = roomOf(socket, p);
    leave(socket, id, "left");
    return { ok: true };
  },
};

const http = createServer((_req, res) => {
  res.writeHead(404).end();
});
const io = new Server(http, {
  serveClient: false,
  pingInterval: 4000, // server.ping_interval / ping_timeout defaults
  pingTimeout: 6000,
  maxHttpBufferSize: 2 * MAX_PAYLOAD + 16 * 1024,
});

io.on("connection", (socket) => {
  socket.data.rooms = new Map(); // room id -> own peer id
  socket.onAny((event, ...args) => {
    const ack = typeof args.at(-1) === "function" ? args.pop() : null;
    const payload = args[0];
    let reply;
    try {
      const handler = Object.hasOwn(handlers, event) ? handlers[event] : null;
      if (handler === null) throw new Refused("unknown_event", "unknown event");
      if (payload === null || typeof payload !== "object" || Array.isArray(payload)) {
        throw new Refused("bad_request", "the payload must be an object");
      }
      reply = handler(socket, payload);
    } catch (err) {
      const code = err instanceof Refused ? err.code : "internal";
      const error = { code, message: err instanceof Refused ? err.message : "internal", event };
      socket.emit("error", error);
      reply = { ok: false, error };
    }
    if (ack) ack(reply);
  });
  socket.on("disconnecting", () => {
    for (const id of [...socket.data.rooms.keys()]) leave(socket, id, "disconnected");
  });
});

function stop() {
  io.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on("SIGTERM", stop);
process.on("SIGINT", stop);

http.listen(PORT, "127.0.0.1", () => {
  console.log(`listening http://127.0.0.1:${PORT}`);
});
