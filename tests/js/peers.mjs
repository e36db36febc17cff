// Drives a live incognito-onion signaling server with the official socket.io-client, the same
// library the browser client uses, and prints what each peer saw as one JSON document on stdout.
//
//   node tests/js/peers.mjs http://127.0.0.1:PORT [--up-room ROOM]
//
// Scenarios: four peers (create/join/message/connection/screen share/leave/disconnect), capacity,
// locked room, unknown room, kicked peer, and the room printed by `up`. The script records; the
// assertions live in tests/test_signaling_node.py. Negative observations ("B never got its own
// message") are made after a fence: a later event to the same socket whose arrival proves that
// anything queued before it has arrived too.

import { io } from "socket.io-client";
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";

const argv = process.argv.slice(2);
const base = argv[0];
if (!base || !/^http:\/\/127\.0\.0\.1:\d+$/.test(base)) {
  console.error("usage: node peers.mjs http://127.0.0.1:PORT [--up-room ROOM]");
  process.exit(2);
}
const upRoomIdx = argv.indexOf("--up-room");
const upRoom = upRoomIdx > 0 ? argv[upRoomIdx + 1] : null;
const TIMEOUT = 5000;

const blob = (n = 24) => randomBytes(n).toString("base64url");

// transports to exercise: long-polling only, websocket only, and polling upgraded to websocket
const TRANSPORTS = {
  polling: ["polling"],
  websocket: ["websocket"],
  upgrade: ["polling", "websocket"],
};

const opened = [];

class Peer {
  constructor(name, transport = "websocket") {
    this.name = name;
    this.transport = transport;
    this.log = [];
    this.pending = [];
    this.waiters = [];
    this.ids = {}; // room -> peer id
    this.resume = {};
    this.socket = io(base, {
      transports: TRANSPORTS[transport],
      reconnection: false,
      forceNew: true,
      timeout: TIMEOUT,
    });
    opened.push(this);
    this.socket.onAny((event, ...args) => {
      const payload = args.length === 1 ? args[0] : args;
      this.log.push([event, payload]);
      this.pending.push([event, payload]);
      this.waiters.forEach((w) => w());
    });
  }

  connect() {
    return new Promise((resolve, reject) => {
      if (this.socket.connected) return resolve(this);
      const timer = setTimeout(() => reject(new Error(`${this.name}: connect timeout`)), TIMEOUT);
      this.socket.once("connect", () => {
        clearTimeout(timer);
        resolve(this);
      });
      this.socket.once("connect_error", (err) => {
        clearTimeout(timer);
        reject(new Error(`${this.name}: connect_error ${err.message}`));
      });
    });
  }

  call(event, payload) {
    return this.socket.timeout(TIMEOUT).emitWithAck(event, payload);
  }

  static matches(payload, fields) {
    if (!fields) return true;
    if (payload === null || typeof payload !== "object") return false;
    return Object.entries(fields).every(([k, v]) => payload[k] === v);
  }

  // wait for (and consume) the next `event` whose payload has `fields`
  next(event, fields = null, timeout = TIMEOUT) {
    return new Promise((resolve, reject) => {
      const check = () => {
        const i = this.pending.findIndex(([e, p]) => e === event && Peer.matches(p, fields));
        if (i < 0) return false;
        const [, payload] = this.pending.splice(i, 1)[0];
        cleanup();
        resolve(payload);
        return true;
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new Error(`${this.name}: no ${event} ${JSON.stringify(fields)} in ${timeout} ms`));
      }, timeout);
      const waiter = () => check();
      const cleanup = () => {
        clearTimeout(timer);
        this.waiters = this.waiters.filter((w) => w !== waiter);
      };
      this.waiters.push(waiter);
      check();
    });
  }

  seen(event, fields = null) {
    return this.log.filter(([e, p]) => e === event && Peer.matches(p, fields)).map(([, p]) => p);
  }

  async create(meta) {
    const ack = await this.call("create", meta === undefined ? {} : { meta });
    if (!ack || ack.ok !== true) throw new Error(`${this.name}: create -> ${JSON.stringify(ack)}`);
    this.ids[ack.room] = ack.peer;
    this.resume[ack.room] = ack.resume;
    return ack;
  }

  async join(room, meta) {
    const ack = await this.call("join", meta === undefined ? { room } : { room, meta });
    if (ack && ack.ok === true) {
      this.ids[ack.room] = ack.peer;
      this.resume[ack.room] = ack.resume;
    }
    return ack;
  }

  close() {
    this.socket.disconnect();
  }
}

let fenceCount = 0;
async function fence(sender, receiver, room) {
  const data = `fence-${++fenceCount}`;
  const ack = await sender.call("connection", { room, to: receiver.ids[room], data });
  if (!ack || ack.ok !== true) throw new Error(`fence: ${JSON.stringify(ack)}`);
  await receiver.next("connection", { room, data });
}

async function peer(name, transport) {
  return new Peer(name, transport).connect();
}

// ---------------------------------------------------------------------------------------------

async function relay() {
  const out = {};
  const a = await peer("A", "upgrade");
  const b = await peer("B", "websocket");
  const c = await peer("C", "polling");
  const d = await peer("D", "websocket");
  const all = [a, b, c, d];
  out.sids = all.map((p) => p.socket.id);

  out.created = await a.create("meta-A");
  const room = out.created.room;
  out.joins = [];
  for (const p of [b, c, d]) out.joins.push(await p.join(room, `meta-${p.name}`));
  out.ids = Object.fromEntries(all.map((p) => [p.name, p.ids[room]]));
  // the `joined` events each peer saw, after everyone is in
  for (const [i, p] of [b, c, d].entries()) {
    for (const q of all.slice(0, i + 1)) await q.next("joined", { peer: p.ids[room] });
  }
  out.joinedSeen = Object.fromEntries(all.map((p) => [p.name, p.seen("joined")]));

  // message from B: A, C, D get it; B does not
  const msg = blob();
  out.messageAck = await b.call("message", { room, data: msg });
  out.messageReceived = {};
  for (const q of [a, c, d]) out.messageReceived[q.name] = await q.next("message", { data: msg });
  await fence(a, b, room);
  out.messageEcho = b.seen("message", { data: msg });

  // connection from B to D: only D
  const sig = blob();
  out.connectionAck = await b.call("connection", { room, to: d.ids[room], data: sig });
  out.connectionReceived = await d.next("connection", { data: sig });
  out.connectionElsewhere = {};
  for (const q of [a, b, c]) {
    await fence(d, q, room);
    out.connectionElsewhere[q.name] = q.seen("connection", { data: sig });
  }

  // screen share from C: everyone else
  out.share = {};
  for (const event of ["connection/shareScreen", "connection/unshareScreen"]) {
    const data = blob();
    const ack = await c.call(event, { room, data });
    const received = {};
    for (const q of [a, b, d]) received[q.name] = await q.next(event, { data });
    await fence(a, c, room);
    out.share[event] = { ack, received, echo: c.seen(event, { data }) };
  }

  // D leaves
  out.leaveAck = await d.call("leave", { room });
  out.leftOnLeave = {};
  for (const q of [a, b, c]) out.leftOnLeave[q.name] = await q.next("left", { peer: d.ids[room] });
  out.afterLeave = await d.call("message", { room, data: blob() });

  // C drops its connection
  c.close();
  out.leftOnDisconnect = {};
  for (const q of [a, b]) {
    out.leftOnDisconnect[q.name] = await q.next("left", { peer: c.ids[room] }, 10000);
  }
  out.transports = Object.fromEntries(
    [a, b, d].map((p) => [p.name, p.socket.io.engine.transport.name]),
  );
  for (const p of all) p.close();
  return out;
}

async function capacity() {
  const out = {};
  const first = await peer("P0");
  out.created = await first.create();
  const room = out.created.room;
  const n = out.created.capacity;
  out.joins = [];
  const ps = [first];
  for (let i = 1; i < n; i++) {
    const p = await peer(`P${i}`);
    out.joins.push(await p.join(room));
    ps.push(p);
  }
  const extra = await peer("extra");
  out.overflow = await extra.join(room);
  out.overflowError = await extra.next("error", { event: "join" }).catch((e) => String(e));
  // a place frees up
  await ps[n - 1].call("leave", { room });
  out.afterLeave = await extra.join(room);
  for (const p of [...ps, extra]) p.close();
  return out;
}

async function locked() {
  const out = {};
  const host = await peer("host");
  const guest = await peer("guest");
  const late = await peer("late");
  const room = (await host.create()).room;
  await guest.join(room);
  out.guestLock = await guest.call("lock", { room, locked: true });
  out.guestLockError = await guest.next("error", { event: "lock" }).catch((e) => String(e));
  out.lockAck = await host.call("lock", { room, locked: true });
  out.lockedEvents = {
    host: await host.next("locked").catch((e) => String(e)),
    guest: await guest.next("locked").catch((e) => String(e)),
  };
  out.lateJoin = await late.join(room);
  out.lateJoinError = await late.next("error", { event: "join" }).catch((e) => String(e));
  out.unlockAck = await host.call("lock", { room, locked: false });
  out.lateJoinAfterUnlock = await late.join(room);
  for (const p of [host, guest, late]) p.close();
  return out;
}

async function unknownRoom() {
  const out = {};
  const p = await peer("lost");
  const room = randomBytes(16).toString("base64url");
  out.join = await p.join(room);
  out.errorEvent = await p.next("error", { event: "join" }).catch((e) => String(e));
  out.badId = await p.join("not-a-room-id");
  out.unknownEvent = await p.call("no-such-event", {});
  p.close();
  return out;
}

async function kicked() {
  const out = {};
  const host = await peer("host");
  const target = await peer("target");
  const other = await peer("other");
  const room = (await host.create()).room;
  await target.join(room);
  await other.join(room);
  out.target = target.ids[room];
  out.notHost = await other.call("remove", { room, peer: host.ids[room] });
  out.removeAck = await host.call("remove", { room, peer: target.ids[room] });
  out.removed = await target.next("removed").catch((e) => String(e));
  out.leftAtHost = await host.next("left", { peer: target.ids[room] }).catch((e) => String(e));
  out.leftAtOther = await other.next("left", { peer: target.ids[room] }).catch((e) => String(e));
  out.targetMessage = await target.call("message", { room, data: blob() });
  out.targetConnection = await target.call("connection", { room, to: other.ids[room], data: "x" });
  out.targetErrors = target.seen("error");
  // the others no longer reach it
  const data = blob();
  await other.call("message", { room, data });
  await host.next("message", { data });
  await fence(other, host, room);
  out.targetGotMessage = target.seen("message", { data });
  out.toTarget = await other.call("connection", { room, to: target.ids[room], data: "x" });
  for (const p of [host, target, other]) p.close();
  return out;
}

async function upRoomScenario() {
  if (!upRoom) return null;
  const out = {};
  const first = await peer("first", "polling");
  const second = await peer("second");
  out.first = await first.join(upRoom, "m1");
  out.second = await second.join(upRoom, "m2");
  out.joinedAtFirst = await first.next("joined").catch((e) => String(e));
  for (const p of [first, second]) p.close();
  return out;
}

const SCENARIOS = { relay, capacity, locked, unknownRoom, kicked, upRoom: upRoomScenario };

const results = {
  client: {
    library: "socket.io-client",
    version: JSON.parse(
      readFileSync(new URL("./node_modules/socket.io-client/package.json", import.meta.url)),
    ).version,
    node: process.version,
  },
  scenarios: {},
};
for (const [name, run] of Object.entries(SCENARIOS)) {
  try {
    results.scenarios[name] = await run();
  } catch (err) {
    results.scenarios[name] = { exception: String(err && err.stack ? err.stack : err) };
  }
}
for (const p of opened) p.close();
process.stdout.write(JSON.stringify(results) + "\n");
process.exit(0);
