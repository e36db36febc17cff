// Load generator for bench/relay_load.py --generator node: the same job as relay_load.py's
// Python `Worker` (--worker mode), with the official socket.io-client instead of python-socketio,
// so that one generator process costs a fraction of a core and the servers can be driven to
// saturation on a small machine.
//
//   node bench/node/load_gen.mjs [--worker] --base URL --clients N --first I --rooms-of K
//        --rate R --size S --drain D --concurrency C --out PATH
//
// Same arguments as the Python worker, same JSON lines on stdin/stdout:
//   stdout: {"event": "ready", ...} once every client is connected and in its room,
//           {"event": "done", ...} after each run, {"event": "bye"} after quit;
//   stdin:  {"cmd": "run", "start": ns, "window_start": ns, "window_end": ns} | {"cmd": "quit"}.
// Times are CLOCK_MONOTONIC ns: process.hrtime.bigint() is CLOCK_MONOTONIC on Linux (libuv's
// uv_hrtime), the clock of Python's time.monotonic_ns(), so send and receive times compare
// across processes and languages. Payload: base64url of >QIIH (send ns, sender index, sequence
// number, magic 0xB3E7) = 24 characters, then random padding to --size characters.
// Files PATH.lat / .lag / .stall: float32 little-endian arrays (relay latency ms of messages sent
// in the window, send lag ms behind schedule, ms this event loop overslept a 10 ms timer), like
// Python's array('f').tobytes() on x86/arm.
// Exits when stdin closes (the orchestrator is gone).

import { writeFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { io } from "socket.io-client";

const MAGIC = 0xb3e7;
const HEAD_CHARS = 24;
const B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

// ---- arguments ----------------------------------------------------------------------------
const opts = {};
{
  const argv = process.argv.slice(2);
  for (let k = 0; k < argv.length; k++) {
    const a = argv[k];
    if (a === "--worker") continue;
    if (!a.startsWith("--") || k + 1 >= argv.length) {
      console.error(`load_gen.mjs: bad argument ${a}`);
      process.exit(2);
    }
    opts[a.slice(2).replace(/-/g, "_")] = argv[++k];
  }
}
const args = {
  base: opts.base,
  clients: Number.parseInt(opts.clients ?? "1000", 10),
  first: Number.parseInt(opts.first ?? "0", 10),
  roomsOf: Number.parseInt(opts.rooms_of ?? "4", 10),
  rate: Number.parseFloat(opts.rate ?? "1"),
  size: Number.parseInt(opts.size ?? "256", 10),
  drain: Number.parseFloat(opts.drain ?? "2"),
  concurrency: Number.parseInt(opts.concurrency ?? "50", 10),
  out: opts.out,
};
if (!args.base || !args.out || !(args.clients >= 1) || !(args.rate > 0)) {
  console.error("usage: node load_gen.mjs --base URL --clients N --first I --rooms-of K "
    + "--rate R --size S --drain D --concurrency C --out PATH");
  process.exit(2);
}

// ---- helpers ------------------------------------------------------------------------------
/** mulberry32, seeded with the first client index like the Python worker's Random(first). */
function rng(seed) {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const random = rng(args.first);
const randomText = (n) => {
  let s = "";
  for (let k = 0; k < n; k++) s += B64[Math.floor(random() * 64)];
  return s;
};

const now = () => process.hrtime.bigint();
const sleepMs = (ms) => new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)));
const headBuf = Buffer.alloc(18);

function encode(tNs, idx, seq, pad) {
  headBuf.writeBigUInt64BE(tNs, 0);
  headBuf.writeUInt32BE(idx >>> 0, 8);
  headBuf.writeUInt32BE(seq >>> 0, 12);
  headBuf.writeUInt16BE(MAGIC, 16);
  return headBuf.toString("base64url") + pad;
}

/** send time (BigInt ns) or null */
function decode(data) {
  if (typeof data !== "string" || data.length < HEAD_CHARS) return null;
  const head = data.slice(0, HEAD_CHARS);
  if (!/^[A-Za-z0-9_-]{24}$/.test(head)) return null;
  const b = Buffer.from(head, "base64url");
  if (b.length !== 18 || b.readUInt16BE(16) !== MAGIC) return null;
  return b.readBigUInt64BE(0);
}

class Semaphore {
  constructor(n) {
    this.n = n;
    this.waiting = [];
  }

  async with(fn) {
    if (this.n > 0) this.n--;
    else await new Promise((resolve) => this.waiting.push(resolve));
    try {
      return await fn();
    } finally {
      const next = this.waiting.shift();
      if (next) next();
      else this.n++;
    }
  }
}

const count = (counter, key) => {
  counter[key] = (counter[key] ?? 0) + 1;
};
const pyStr = (v) => (v === undefined || v === null ? "None" : String(v));
const say = (msg) => process.stdout.write(`${JSON.stringify(msg)}\n`);

// ---- state --------------------------------------------------------------------------------
const clients = [];
const roomOf = new Map(); // local index -> [room id, room size]
let win = [0n, 0n];
let stopping = false;
const connectFailed = {};
const setupFailed = {};
const errorEvents = {};
const ackFailed = {};
let acksOk = 0;
let sentTotal = 0;
let emitFailed = 0;
let disconnects = 0;
const disconnectReasons = {}; // socket.io-client's reason: which side ended it, and why
let sentWindow = 0;
let expectedWindow = 0;
let deliveredWindow = 0;
let deliveredTotal = 0;
let corrupt = 0;
let latencies = [];
let lag = [];
let stalls = [];

function makeClient() {
  const socket = io(args.base, {
    transports: ["websocket"], // like the Python clients: no long-polling, no upgrade
    reconnection: false,
    forceNew: true, // one engine.io connection per client
    autoConnect: false,
    timeout: 30000,
    perMessageDeflate: false, // aiohttp's client does not offer it either
  });
  socket.on("message", (payload) => {
    const t = now();
    const sent = payload && typeof payload === "object" ? decode(payload.data) : null;
    if (sent === null) {
      corrupt++;
      return;
    }
    deliveredTotal++;
    if (win[0] <= sent && sent < win[1]) {
      deliveredWindow++;
      latencies.push(Number(t - sent) / 1e6);
    }
  });
  socket.on("error", (payload) => {
    count(errorEvents, pyStr(payload && typeof payload === "object" ? payload.code : undefined));
  });
  socket.on("disconnect", (reason) => {
    if (!stopping) {
      disconnects++;
      count(disconnectReasons, String(reason));
    }
  });
  return socket;
}

function connect(socket) {
  return new Promise((resolve, reject) => {
    const ok = () => {
      socket.off("connect_error", bad);
      resolve();
    };
    const bad = (err) => {
      socket.off("connect", ok);
      socket.disconnect();
      reject(err);
    };
    socket.once("connect", ok);
    socket.once("connect_error", bad);
    socket.connect();
  });
}

async function setup() {
  for (let i = 0; i < args.clients; i++) clients.push(makeClient());
  const gate = new Semaphore(args.concurrency);
  const connected = new Array(args.clients).fill(false);
  let t0 = performance.now();
  await Promise.all(clients.map((socket, i) => gate.with(async () => {
    try {
      await connect(socket);
      connected[i] = true;
    } catch (err) {
      count(connectFailed, String(err?.message ?? "").slice(0, 80) || (err?.name ?? "Error"));
    }
  })));
  const tConnect = (performance.now() - t0) / 1000;

  const meta = randomText(64); // an encrypted display name

  async function call(i, event, payload) {
    let ack;
    try {
      ack = await clients[i].timeout(30000).emitWithAck(event, payload);
    } catch (err) {
      const name = /timed out/.test(String(err?.message)) ? "TimeoutError" : (err?.name ?? "Error");
      count(setupFailed, `${event}: ${name}`);
      return null;
    }
    if (!(ack && typeof ack === "object" && ack.ok === true)) {
      const code = ack && typeof ack === "object" ? ack.error?.code : ack;
      count(setupFailed, `${event}: ${pyStr(code)}`);
      return null;
    }
    return ack;
  }

  async function room(group) {
    const members = group.filter((i) => connected[i]);
    if (!members.length) return;
    const ack = await call(members[0], "create", { meta });
    if (ack === null) return;
    const inside = [members[0]];
    for (const i of members.slice(1)) {
      if ((await call(i, "join", { room: ack.room, meta })) !== null) inside.push(i);
    }
    for (const i of inside) roomOf.set(i, [ack.room, inside.length]);
  }

  t0 = performance.now();
  const groups = [];
  for (let s = 0; s < args.clients; s += args.roomsOf) {
    const g = [];
    for (let i = s; i < Math.min(s + args.roomsOf, args.clients); i++) g.push(i);
    groups.push(g);
  }
  await Promise.all(groups.map((g) => gate.with(() => room(g))));
  const tRooms = (performance.now() - t0) / 1000;
  say({
    event: "ready", connected: connected.filter(Boolean).length, in_rooms: roomOf.size,
    rooms: new Set([...roomOf.values()].map(([r]) => r)).size, t_connect: tConnect,
    t_rooms: tRooms, connect_failed: connectFailed, setup_failed: setupFailed,
  });
}

function onAck(reply) {
  if (reply && typeof reply === "object" && reply.ok === true) {
    acksOk++;
  } else {
    count(ackFailed, pyStr(reply && typeof reply === "object" ? reply.error?.code : reply));
  }
}

async function sender(i, startNs, stopNs) {
  const [roomId, size] = roomOf.get(i);
  const socket = clients[i];
  const idx = args.first + i;
  const pad = randomText(Math.max(0, args.size - HEAD_CHARS));
  const period = BigInt(Math.trunc(1e9 / args.rate));
  let due = startNs + BigInt(Math.trunc(random() * Number(period)));
  let seq = 0;
  const [w0, w1] = win;
  while (due < stopNs) {
    const delay = due - now();
    // setTimeout counts whole ms from the loop's cached time: round up, never send early
    if (delay > 0n) await sleepMs(Math.ceil(Number(delay) / 1e6));
    const t = now();
    if (!socket.connected) return; // socket.io-client would buffer it: the Python one returns
    try {
      socket.emit("message", { room: roomId, data: encode(t, idx, seq, pad) }, onAck);
    } catch {
      emitFailed++;
      seq++;
      due += period;
      continue;
    }
    sentTotal++;
    if (w0 <= t && t < w1) {
      sentWindow++;
      expectedWindow += size - 1;
      lag.push(Number(t - due) / 1e6);
    }
    seq++;
    due += period;
  }
}

/** How late this event loop wakes up: the generator's own share of the latency. */
async function watchLoop() {
  const [w0, w1] = win;
  const until = Number(w0 - now()) / 1e6;
  if (until > 0) await sleepMs(until);
  for (;;) {
    const t = now();
    if (t >= w1) return;
    await sleepMs(10);
    stalls.push(Math.max(0, Number(now() - t) / 1e6 - 10));
  }
}

const f32 = (values) => Buffer.from(new Float32Array(values).buffer); // little-endian on x86/arm

async function run(cmd) {
  win = [cmd.window_start, cmd.window_end];
  latencies = [];
  lag = [];
  stalls = [];
  await Promise.all([watchLoop(), ...[...roomOf.keys()].map(
    (i) => sender(i, cmd.start, cmd.window_end))]);
  await sleepMs(Math.max(0, Number(cmd.window_end - now()) / 1e6) + args.drain * 1000);
  writeFileSync(`${args.out}.lat`, f32(latencies));
  writeFileSync(`${args.out}.lag`, f32(lag));
  writeFileSync(`${args.out}.stall`, f32(stalls));
  let ackFailedN = 0;
  for (const v of Object.values(ackFailed)) ackFailedN += v;
  say({
    event: "done", sent_total: sentTotal, sent_window: sentWindow,
    expected_window: expectedWindow, delivered_window: deliveredWindow,
    delivered_total: deliveredTotal, acks_ok: acksOk, ack_failed: ackFailed,
    ack_missing: sentTotal - acksOk - ackFailedN, emit_failed: emitFailed,
    error_events: errorEvents, disconnects, disconnect_reasons: disconnectReasons, corrupt,
    connected_at_end: clients.filter((c) => c.connected).length,
  });
}

async function close() {
  stopping = true;
  for (const c of clients) c.disconnect(); // a close frame each; no reply awaited
  await sleepMs(200); // let the frames go out
}

/** The commands' ns times as BigInt (monotonic ns exceed what a double holds exactly). */
function parseCommand(line) {
  const cmd = JSON.parse(line.replace(/"(start|window_start|window_end)"\s*:\s*(\d+)/g,
    '"$1":"$2"'));
  for (const k of ["start", "window_start", "window_end"]) {
    if (k in cmd) cmd[k] = BigInt(cmd[k]);
  }
  return cmd;
}

async function main() {
  const lines = createInterface({ input: process.stdin, crlfDelay: Infinity });
  const queue = [];
  let wake = null;
  let eof = false;
  lines.on("line", (line) => {
    queue.push(line);
    if (wake) wake();
  });
  lines.on("close", () => {
    eof = true;
    if (wake) wake();
  });
  const command = async () => {
    while (!queue.length) {
      if (eof) return null;
      await new Promise((resolve) => {
        wake = resolve;
      });
      wake = null;
    }
    return parseCommand(queue.shift());
  };

  await setup();
  try {
    for (;;) {
      const cmd = await command();
      if (cmd === null) {
        await close(); // the orchestrator is gone
        process.exit(0);
      }
      if (cmd.cmd === "run") await run(cmd);
      else if (cmd.cmd === "quit") break;
    }
  } finally {
    await close();
  }
  say({ event: "bye" });
  process.exit(0);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
