// Signaling over an in-memory relay that behaves like docs/protocol.md (a blind relay), plus the
// capability verdicts and the bandwidth plan.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { assess, detect } from '../../static/js/capabilities.js';
import { generateRoomKey, parseRoomKey } from '../../static/js/crypto.js';
import { planBudget } from '../../static/js/mesh.js';
import { Signaling } from '../../static/js/signaling.js';

let counter = 0;
const id = (n) => `${String(++counter).padStart(n, 'x')}`;

/** A tiny blind relay: rooms, peers, resume tokens; records every payload it relays. */
class FakeServer {
  constructor() {
    this.rooms = new Map();
    this.seen = [];
    this.turnUser = 'first';
  }

  /** the process was killed and started again: it knows no room, its TURN secret is new */
  restart() {
    this.rooms = new Map();
    this.turnUser = 'after-restart';
  }

  socket() {
    return new FakeSocket(this);
  }

  handle(sock, event, p, ack) {
    this.seen.push({ event, p: JSON.stringify(p) });
    const reply = (x) => ack && ack(x);
    const welcome = (room, peer) => ({
      ok: true, room: room.id, peer: peer.id, host: room.host, resume: peer.resume,
      restore: `ticket-${room.id}`, locked: !!room.locked, capacity: 6,
      peers: [...room.peers.values()].filter((q) => q !== peer).map((q) => ({ peer: q.id, meta: q.meta })),
      iceServers: [{ urls: ['turn:127.0.0.1:3478?transport=tcp'], username: this.turnUser, credential: 'c' }],
      iceTransportPolicy: 'relay', iceExpires: null, // null: no refresh timer keeps node alive
      media: { uploadKbps: 2000, minVideoKbps: 150 },
      ...(room.host === peer.id && room.hostEpoch ? { hostRestore: `${room.hostEpoch}.host-${room.id}` } : {}),
    });
    if (event === 'create') {
      const room = { id: id(22), peers: new Map(), host: null, hostEpoch: 1 };
      const peer = { id: id(16), resume: id(22), meta: p.meta || '', sock };
      room.host = peer.id;
      room.peers.set(peer.id, peer);
      this.rooms.set(room.id, room);
      sock.peer = peer; sock.room = room;
      return reply(welcome(room, peer));
    }
    if (event === 'join' && !this.rooms.has(p.room) && p.restore === `ticket-${p.room}`) {
      // opened again: it forgot its host epoch, any valid host ticket wins
      this.rooms.set(p.room, { id: p.room, peers: new Map(), host: null, hostEpoch: null });
    }
    const room = this.rooms.get(p.room);
    if (!room) return reply({ ok: false, error: { code: 'room_not_found', message: 'x' } });
    if (event === 'join') {
      const stale = p.resume && [...room.peers.values()].find((q) => q.resume === p.resume);
      if (stale) {
        stale.sock = sock; stale.meta = p.meta;
        sock.peer = stale; sock.room = room;
        for (const q of room.peers.values()) {
          if (q !== stale) q.sock.deliver('joined', { room: room.id, peer: stale.id, meta: stale.meta, resumed: true });
        }
        return reply(welcome(room, stale));
      }
      const peer = { id: id(16), resume: id(22), meta: p.meta, sock };
      room.peers.set(peer.id, peer);
      if (!room.host) room.host = peer.id;
      sock.peer = peer; sock.room = room;
      for (const q of room.peers.values()) {
        if (q !== peer) q.sock.deliver('joined', { room: room.id, peer: peer.id, meta: peer.meta, resumed: false });
      }
      const claim = typeof p.hostRestore === 'string' && p.hostRestore.endsWith(`.host-${room.id}`)
        ? Number(p.hostRestore.split('.')[0]) : null;
      if (claim !== null && (room.hostEpoch === null || claim > room.hostEpoch)) {
        room.hostEpoch = claim;
        room.host = peer.id;
        for (const q of room.peers.values()) {
          if (q !== peer) q.sock.deliver('host', { room: room.id, peer: peer.id });
        }
      }
      return reply(welcome(room, peer));
    }
    const me = sock.peer;
    if (event === 'message') {
      for (const q of room.peers.values()) {
        if (q !== me) q.sock.deliver('message', { room: room.id, from: me.id, data: p.data });
      }
      return reply({ ok: true });
    }
    if (event === 'connection') {
      room.peers.get(p.to)?.sock.deliver('connection', { room: room.id, from: me.id, data: p.data });
      return reply({ ok: true });
    }
    if (event === 'ice') {
      return reply({ ok: true, iceServers: [{ urls: ['turn:127.0.0.1:3478?transport=tcp'],
        username: 'fresh', credential: 'c' }], iceTransportPolicy: 'relay', iceExpires: 4102444800 });
    }
    if (event === 'lock') {
      if (room.host !== me.id) return reply({ ok: false, error: { code: 'not_host', message: 'x' } });
      room.locked = p.locked;
      for (const q of room.peers.values()) q.sock.deliver('locked', { room: room.id, locked: p.locked });
      return reply({ ok: true, locked: p.locked });
    }
    if (event === 'leave') {
      room.peers.delete(me.id);
      for (const q of room.peers.values()) q.sock.deliver('left', { room: room.id, peer: me.id, reason: 'left' });
      return reply({ ok: true });
    }
    return reply({ ok: false, error: { code: 'unknown_event', message: event } });
  }
}

class FakeSocket {
  constructor(server) {
    this.server = server;
    this.handlers = new Map();
    this.connected = false;
  }

  on(ev, fn) {
    if (!this.handlers.has(ev)) this.handlers.set(ev, []);
    this.handlers.get(ev).push(fn);
  }

  deliver(ev, payload) {
    if (!this.connected) return;
    setTimeout(() => { for (const fn of this.handlers.get(ev) || []) fn(payload); }, 0);
  }

  emit(ev, payload, ack) {
    setTimeout(() => this.server.handle(this, ev, payload, ack), 0);
  }

  connect() {
    this.connected = true;
    this.deliver('connect');
  }

  /** simulate a dropped transport that socket.io re-establishes */
  bounce() {
    for (const fn of this.handlers.get('disconnect') || []) fn('transport close');
    this.connect();
  }

  disconnect() {
    this.connected = false;
  }
}

/** @returns {Promise<any>} the detail of the next `type` event */
const next = (target, type) => new Promise((resolve) => {
  target.addEventListener(type, (e) => resolve(e.detail), { once: true });
});

async function room(n, keys) {
  const server = new FakeServer();
  const key = generateRoomKey();
  const sigs = [];
  const first = new Signaling({ socket: server.socket(), keyBytes: parseRoomKey((keys && keys[0]) || key) });
  const roomId = await first.create();
  first.setProfile({ name: 'Alice' });
  sigs.push(first);
  for (let i = 1; i < n; i++) {
    const s = new Signaling({ socket: server.socket(), keyBytes: parseRoomKey((keys && keys[i]) || key) });
    const seen = Promise.all(sigs.map((o) => next(o, 'peer-joined')));
    await s.join(roomId, { name: `Person ${i}` });
    await seen; // everyone already in the room has handled the newcomer
    sigs.push(s);
  }
  return { server, sigs, roomId };
}

test('join profiles, chat and signaling arrive decrypted; the relay sees only ciphertext', async () => {
  const { server, sigs } = await room(1);
  const [a] = sigs;
  const joined = next(a, 'peer-joined');
  const b = new Signaling({ socket: server.socket(), keyBytes: a.keyBytes });
  await b.join(a.room, { name: 'Bob the Builder' });
  const j = await joined;
  assert.equal(j.peer, b.self);
  assert.deepEqual(j.profile, { name: 'Bob the Builder' });
  assert.equal(b.peers.size, 1);

  const got = next(b, 'message');
  await a.broadcast({ type: 'chat', text: 'the eagle lands at noon' });
  assert.deepEqual(await got, { from: a.self, body: { type: 'chat', text: 'the eagle lands at noon' } });

  const sig = next(a, 'signal');
  await b.signal(a.self, { description: { type: 'offer', sdp: 'a=fingerprint:sha-256 AB:CD' } });
  assert.equal((await sig).body.description.sdp, 'a=fingerprint:sha-256 AB:CD');

  const relayed = server.seen.map((s) => s.p).join('\n');
  for (const secret of ['eagle', 'Bob the Builder', 'fingerprint', 'offer']) {
    assert.ok(!relayed.includes(secret), `relay saw ${secret}`);
  }
});

test('a peer with a wrong key decrypts nothing and both sides count it', async () => {
  const { sigs } = await room(2, [generateRoomKey(), generateRoomKey()]);
  const [a, b] = sigs;
  // b's join profile already failed to open at a
  assert.equal(a.undecryptable, 1);
  assert.deepEqual([...a.badSenders], [b.self]);
  const bad = next(b, 'undecryptable');
  let delivered = false;
  b.addEventListener('message', () => { delivered = true; });
  await a.broadcast({ type: 'chat', text: 'hi' });
  const d = await bad;
  assert.equal(d.from, a.self);
  assert.equal(d.channel, 'message');
  assert.ok(!delivered);
});

test('a replayed message is dropped', async () => {
  const { server, sigs } = await room(2);
  const [a, b] = sigs;
  const bodies = [];
  b.addEventListener('message', (e) => bodies.push(e.detail.body));
  const got = next(b, 'message');
  await a.broadcast({ n: 1 });
  await got;
  const last = server.seen.filter((s) => s.event === 'message').at(-1);
  const data = JSON.parse(last.p).data;
  // the server re-sends the same ciphertext
  b.socket.deliver('message', { room: a.room, from: a.self, data });
  const again = next(b, 'message');
  await a.broadcast({ n: 2 });
  await again;
  assert.deepEqual(bodies, [{ n: 1 }, { n: 2 }]);
  assert.equal(b.replayed, 1);
});

test('after the socket comes back the client rejoins with its resume token', async () => {
  const { sigs } = await room(2);
  const [a, b] = sigs;
  const before = b.self;
  const resumedAt = next(a, 'peer-joined');
  const rejoined = next(b, 'room');
  b.socket.bounce();
  const r = await rejoined;
  assert.equal(r.resumed, true);
  assert.equal(b.self, before);
  const j = await resumedAt;
  assert.equal(j.resumed, true);
  assert.deepEqual(j.profile, { name: 'Person 1' });
  // and messages still flow both ways, sequence numbers going on
  const got = next(a, 'message');
  await b.broadcast({ after: 'resume' });
  assert.deepEqual((await got).body, { after: 'resume' });
});

test('a restarted server: the client brings the room back with its ticket and new TURN credentials', async () => {
  const { server, sigs } = await room(2);
  const [a, b] = sigs;
  const [oldA, oldB, rid] = [a.self, b.self, a.room];
  assert.equal(a.ice.iceServers[0].username, 'first');
  a.locked = true; // the host had locked the room
  b.locked = true;
  let aLost = false;
  a.addEventListener('lock-lost', () => { aLost = true; });
  let bLost = false;
  b.addEventListener('lock-lost', () => { bLost = true; });
  server.restart();
  const events = [];
  for (const s of sigs) {
    for (const ev of ['ice', 'room']) s.addEventListener(ev, () => events.push(`${s === a ? 'a' : 'b'}:${ev}`));
  }
  const backA = next(a, 'room');
  const relocked = next(a, 'locked');
  a.socket.bounce();
  const ra = await backA;
  assert.equal(ra.resumed, false);
  assert.equal(a.room, rid);
  assert.notEqual(a.self, oldA);
  assert.equal(a.host, a.self);
  assert.deepEqual(ra.peers, []);
  // the mesh hears of the new credentials before it rebuilds its links for the room
  assert.deepEqual(events, ['a:ice', 'a:room']);
  assert.equal(a.ice.iceServers[0].username, 'after-restart');
  // the host was first back: it locks the room again, and says nothing
  assert.deepEqual(await relocked, { locked: true });
  assert.equal(a.locked, true);
  assert.equal(server.rooms.get(rid).locked, true);
  const joinedA = next(a, 'peer-joined');
  const backB = next(b, 'room');
  b.socket.bounce();
  const rb = await backB;
  assert.deepEqual(rb.peers.map((p) => p.peer), [a.self]);
  assert.notEqual(b.self, oldB);
  assert.equal((await joinedA).peer, b.self);
  assert.equal(aLost, false);
  assert.equal(b.locked, true); // back in the room its host locked again: nothing lost
  assert.equal(bLost, false);
  const got = next(a, 'message');
  await b.broadcast({ after: 'restart' });
  assert.deepEqual((await got).body, { after: 'restart' });
  // a server without the room, asked without a ticket, says so: nothing comes back
  server.restart();
  a.restore = null;
  const failed = next(a, 'rejoin-failed');
  a.socket.bounce();
  assert.equal((await failed).code, 'room_not_found');
});

test('a restarted server: the host, back after a guest, takes the role back with its host ticket and locks again', async () => {
  const { server, sigs } = await room(2);
  const [a, b] = sigs;
  const rid = a.room;
  assert.equal(typeof a.hostRestore, 'string'); // the host holds a host ticket
  // a new restore ticket after a removal replaces the old one
  const before = b.restore;
  b.socket.deliver('restore', { room: rid, restore: `1.${before}` });
  b.socket.deliver('restore', { room: 'x'.repeat(22), restore: 'not-ours' });
  await new Promise((r) => setTimeout(r, 5));
  assert.equal(b.restore, `1.${before}`);
  b.restore = before; // what this fake server knows
  assert.equal(b.hostRestore, null); // a guest never does
  a.locked = true; // the host had locked the room
  b.locked = true;
  let aLost = false;
  a.addEventListener('lock-lost', () => { aLost = true; });
  const bLost = next(b, 'lock-lost');
  server.restart();
  // the guest comes back first: the room opens again from its ticket, with the guest as host
  const backB = next(b, 'room');
  b.socket.bounce();
  await backB;
  assert.equal(b.host, b.self);
  assert.deepEqual(await bLost, { wasHost: false, isHost: true });
  // the host comes back: its host ticket takes the role back, and it locks the room again
  const hostMoved = next(b, 'host');
  const lockedAtB = next(b, 'locked');
  const backA = next(a, 'room');
  a.socket.bounce();
  await backA;
  const sent = server.seen.filter((x) => x.event === 'join').map((x) => JSON.parse(x.p));
  assert.equal(sent.at(-1).hostRestore, a.hostRestore);
  assert.equal(sent.at(-2).hostRestore, undefined); // b had none to show
  assert.equal(a.host, a.self);
  assert.deepEqual(await hostMoved, { peer: a.self });
  assert.equal(b.host, a.self);
  assert.deepEqual(await lockedAtB, { locked: true });
  assert.equal(server.rooms.get(rid).locked, true);
  assert.equal(server.rooms.get(rid).host, a.self);
  assert.equal(aLost, false);
});

test('Tor Browser (no WebRTC, no camera, no WebCodecs) gets plain words, not a call', () => {
  const tor = {
    isSecureContext: true, crypto: { subtle: {} }, WebSocket() {}, MediaSource() {},
    navigator: {}, location: { hostname: 'abc.onion' },
  };
  const c = detect(tor);
  assert.equal(c.peerConnection, false);
  assert.equal(c.torLike, true);
  const v = assess(c);
  assert.equal(v.canCall, false);
  assert.equal(v.level, 'limited');
  assert.match(v.headline, /Tor Browser/);
  assert.match(v.lines.join(' '), /chat/);
  assert.match(v.lines.join(' '), /Mullvad Browser/);
});

test('capability verdicts: full browser, no camera access, insecure page', () => {
  const md = { getUserMedia() {}, getDisplayMedia() {}, enumerateDevices() {} };
  const full = {
    isSecureContext: true, crypto: { subtle: {} }, WebSocket() {}, RTCPeerConnection() {},
    VideoEncoder() {}, VideoDecoder() {}, navigator: { mediaDevices: md }, location: { hostname: '127.0.0.1' },
  };
  assert.equal(assess(detect(full)).level, 'full');
  const noCam = { ...full, navigator: {} };
  const v = assess(detect(noCam));
  assert.equal(v.canCall, true);
  assert.equal(v.canSend, false);
  const insecure = { ...full, isSecureContext: false };
  assert.equal(assess(detect(insecure)).level, 'none');
  assert.equal(assess(detect({ ...full, crypto: {} })).level, 'none');
});

test('the upload budget is split across links and video pauses below the floor', () => {
  const one = planBudget({ uploadKbps: 2500, minVideoKbps: 150, links: 1, trackHeight: 720 });
  assert.equal(one.perLinkKbps, 2500);
  assert.equal(one.videoPaused, false);
  assert.equal(one.scaleResolutionDownBy, 1);
  const three = planBudget({ uploadKbps: 2500, minVideoKbps: 150, links: 3, trackHeight: 720 });
  assert.equal(three.perLinkKbps, 833);
  assert.ok(three.scaleResolutionDownBy > 1);
  assert.ok(three.videoKbps < 833);
  const seven = planBudget({ uploadKbps: 1000, minVideoKbps: 150, links: 7, trackHeight: 720 });
  assert.equal(seven.videoPaused, true);
  const screen = planBudget({ uploadKbps: 2500, minVideoKbps: 150, links: 3, trackHeight: 1080, screen: true });
  assert.equal(screen.scaleResolutionDownBy, 1);
});

test('fresh TURN credentials from the ice event are announced', async () => {
  const { sigs } = await room(1);
  const [a] = sigs;
  const got = next(a, 'ice');
  await a.refreshIce();
  const ice = await got;
  assert.equal(ice.iceTransportPolicy, 'relay');
  assert.equal(ice.iceServers[0].username, 'fresh');
  assert.equal(a.ice.iceExpires, 4102444800);
  assert.ok(a.iceTimer, 'the next refresh is scheduled');
  await a.leave();
  assert.equal(a.iceTimer, null);
});
