// Unit tests of the web client's DOM-free modules (node's built-in test runner):
//   node --test tests/client_js/
import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  b64uDecode, b64uEncode, DecryptError, generateRoomKey, KeyError, MIN_KEY_BYTES, pad,
  parseRoomKey, ReplayWindow, RoomCipher,
} from '../../static/js/crypto.js';

const ROOM = 'AAAAAAAAAAAAAAAAAAAAAA';

test('base64url round-trips and decoding is strict', () => {
  for (let n = 0; n < 70; n++) {
    const bytes = new Uint8Array(n).map((_, i) => (i * 37 + n) & 0xff);
    const text = b64uEncode(bytes);
    assert.match(text, /^[A-Za-z0-9_-]*$/);
    assert.deepEqual(b64uDecode(text), bytes);
  }
  for (const bad of ['a+b', 'ab/c', 'abc=', 'a b', 'A', 'é']) {
    assert.throws(() => b64uDecode(bad), TypeError, bad);
  }
});

test('a new room key is 256 random bits, 43 characters, different each time', () => {
  const a = generateRoomKey();
  const b = generateRoomKey();
  assert.equal(a.length, 43);
  assert.notEqual(a, b);
  assert.equal(parseRoomKey(`#${a}`).length, 32);
});

test('parseRoomKey refuses missing, damaged and short keys with plain words', () => {
  assert.throws(() => parseRoomKey(''), KeyError);
  assert.throws(() => parseRoomKey('#'), /no room key/);
  assert.throws(() => parseRoomKey('#abc$def'), /damaged/);
  const short = b64uEncode(new Uint8Array(MIN_KEY_BYTES - 1));
  assert.throws(() => parseRoomKey(`#${short}`), /too short/);
  assert.equal(parseRoomKey(b64uEncode(new Uint8Array(MIN_KEY_BYTES))).length, MIN_KEY_BYTES);
});

test('pad hides lengths in buckets and stays valid JSON', () => {
  const short = pad(JSON.stringify({ a: 1 }));
  assert.equal(short.length, 256);
  assert.deepEqual(JSON.parse(short), { a: 1 });
  assert.equal(pad('x'.repeat(300)).length, 1024);
  assert.equal(pad('x'.repeat(3000)).length, 4096);
});

async function cipher(key = parseRoomKey(generateRoomKey()), room = ROOM) {
  return { key, c: await RoomCipher.create(key, room) };
}

test('seal/open round-trips, with a fresh nonce every time', async () => {
  const { c } = await cipher();
  const msg = { type: 'chat', text: 'hello, secret world' };
  const s1 = await c.seal('message', 'peerAAAAAAAAAAAA', '*', msg);
  const s2 = await c.seal('message', 'peerAAAAAAAAAAAA', '*', msg);
  assert.notEqual(s1, s2);
  assert.match(s1, /^[A-Za-z0-9_-]+$/);
  assert.ok(!s1.includes('secret'));
  assert.deepEqual(await c.open('message', 'peerAAAAAAAAAAAA', '*', s1), msg);
  // the nonces differ (bytes 1..12)
  assert.notDeepEqual(b64uDecode(s1).slice(1, 13), b64uDecode(s2).slice(1, 13));
});

test('anything but the exact key, room, channel, sender and recipient fails to open', async () => {
  const { key, c } = await cipher();
  const sealed = await c.seal('connection', 'senderAAAAAAAAAA', 'recvBBBBBBBBBBBB', { sdp: 'v=0' });
  const other = await RoomCipher.create(parseRoomKey(generateRoomKey()), ROOM);
  const otherRoom = await RoomCipher.create(key, 'BBBBBBBBBBBBBBBBBBBBBB');
  const bad = [
    () => other.open('connection', 'senderAAAAAAAAAA', 'recvBBBBBBBBBBBB', sealed),
    () => otherRoom.open('connection', 'senderAAAAAAAAAA', 'recvBBBBBBBBBBBB', sealed),
    () => c.open('message', 'senderAAAAAAAAAA', 'recvBBBBBBBBBBBB', sealed),
    () => c.open('connection', 'someoneElseAAAAA', 'recvBBBBBBBBBBBB', sealed),
    () => c.open('connection', 'senderAAAAAAAAAA', 'recvCCCCCCCCCCCC', sealed),
    () => c.open('connection', 'senderAAAAAAAAAA', 'recvBBBBBBBBBBBB', `${sealed.slice(0, -2)}AA`),
    () => c.open('connection', 'senderAAAAAAAAAA', 'recvBBBBBBBBBBBB', 'not base64!'),
    () => c.open('connection', 'senderAAAAAAAAAA', 'recvBBBBBBBBBBBB', 'AAAA'),
    () => c.open('connection', 'senderAAAAAAAAAA', 'recvBBBBBBBBBBBB', 42),
  ];
  for (const f of bad) await assert.rejects(f, DecryptError);
  assert.deepEqual(await c.open('connection', 'senderAAAAAAAAAA', 'recvBBBBBBBBBBBB', sealed),
    { sdp: 'v=0' });
});

test('the replay window accepts each sequence number once, tolerating reordering', () => {
  const w = new ReplayWindow(8);
  assert.ok(w.accept(1));
  assert.ok(!w.accept(1));
  assert.ok(w.accept(3));
  assert.ok(w.accept(2));
  assert.ok(!w.accept(2));
  assert.ok(w.accept(20));
  assert.ok(!w.accept(12), 'older than the window');
  assert.ok(w.accept(13));
  for (const bad of [-1, 1.5, '5', null, undefined, Number.MAX_SAFE_INTEGER + 2]) {
    assert.ok(!w.accept(bad), String(bad));
  }
});
