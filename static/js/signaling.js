// @ts-check
/**
 * The signaling client: speaks docs/protocol.md over a socket.io socket and encrypts every
 * `data` / `meta` field with the room key. DOM-free (uses only EventTarget, timers and
 * WebCrypto), so node's test runner can drive it with a fake socket.
 *
 * Events dispatched (CustomEvent, `detail` shown):
 * - `status`   {state: 'connecting'|'connected'|'reconnecting'|'closed'}
 * - `room`     {room, self, host, locked, capacity, peers, resumed}   after create / join / rejoin
 * - `peer-joined` {peer, profile, resumed}   `profile` is the decrypted join profile or null
 * - `peer-left`   {peer, reason}
 * - `host`     {peer}
 * - `locked`   {locked}
 * - `removed`  {}
 * - `message`  {from, body}          a decrypted room-wide message
 * - `signal`   {from, body}          decrypted signaling addressed to us
 * - `screen`   {from, sharing, body}
 * - `undecryptable` {from, channel, count, senders}   something failed to decrypt (dropped)
 * - `server-error`  {code, message, event}
 * - `ice`      {iceServers, iceTransportPolicy, iceExpires}   fresh TURN credentials
 * - `lock-lost` {wasHost, isHost}   the room came back after a server restart, unlocked, and
 *                this page was not its host before (the host, coming back, takes the role
 *                back with its host ticket and locks the room again: a `locked` event follows)
 * - `relay-receivers` {peers}        who receives media through the onion relay
 * - `media`    {from, stream, seq, key, ts, data}   a decrypted relayed media chunk
 * - `keyframe` {from, stream}        start a new recording of `stream` (a receiver or the server asks)
 */

import { DecryptError, MediaCipher, ReplayWindow, RoomCipher } from './crypto.js';

/**
 * The part of a socket.io client socket used here.
 * @typedef {{
 *   on(event: string, fn: (...args: any[]) => void): any,
 *   off?(event: string, fn?: (...args: any[]) => void): any,
 *   emit(event: string, ...args: any[]): any,
 *   connect(): any,
 *   disconnect(): any,
 *   connected: boolean,
 * }} SocketLike
 */

/**
 * @typedef {{ uploadKbps: number, minVideoKbps: number }} MediaBudget
 * @typedef {{ iceServers: RTCIceServer[], iceTransportPolicy: RTCIceTransportPolicy,
 *   iceExpires: number }} IceConfig
 * @typedef {{ peer: string, profile: any }} PeerInfo
 */

/** A failure answered by the server (`{ok: false, error: {code, message}}`) or a time-out. */
export class SignalingError extends Error {
  /**
   * @param {string} code
   * @param {string} message
   */
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

/** Plain-words text for the server's error codes (protocol.md "Replies"). */
export const ERROR_TEXT = /** @type {Record<string, string>} */ ({
  room_not_found: 'This room does not exist any more: it closes when the last person leaves. '
    + 'Start a new room and share its link.',
  room_full: 'This room is full.',
  room_locked: 'The host has locked this room: nobody new can join until they unlock it.',
  server_full: 'The server is busy: too many rooms or connections. Try again in a while.',
  rate_limited: 'Too many messages too fast; some were dropped.',
  payload_too_large: 'That message is too large to send.',
  timeout: 'The server did not answer in time. Check your connection (or Tor) and try again.',
  not_host: 'Only the host can do that.',
});

const ACK_TIMEOUT_MS = 15000;

/** Ice credentials are refreshed this long before they expire. */
const ICE_REFRESH_LEAD_S = 300;

export class Signaling extends EventTarget {
  /**
   * @param {{ socket: SocketLike, keyBytes: Uint8Array, ackTimeoutMs?: number,
   *           now?: () => number }} opts
   */
  constructor(opts) {
    super();
    this.socket = opts.socket;
    this.keyBytes = opts.keyBytes;
    this.ackTimeoutMs = opts.ackTimeoutMs ?? ACK_TIMEOUT_MS;
    this.now = opts.now ?? (() => Date.now());
    /** @type {RoomCipher | null} */
    this.cipher = null;
    /** @type {string | null} */ this.room = null;
    /** @type {string | null} */ this.self = null;
    /** @type {string | null} */ this.host = null;
    /** @type {string | null} */ this.resume = null;
    /** the room's restore ticket: brings the room back if the server restarted under us */
    /** @type {string | null} */ this.restore = null;
    /** the host ticket (while or since we were host): takes the host role back after a
     * server restart, from whoever came back first */
    /** @type {string | null} */ this.hostRestore = null;
    this.locked = false;
    this.capacity = 0;
    /** @type {Map<string, {profile: any}>} */
    this.peers = new Map();
    /** @type {IceConfig} */
    this.ice = { iceServers: [], iceTransportPolicy: 'all', iceExpires: 0 };
    /** @type {MediaBudget} */
    this.media = { uploadKbps: 2500, minVideoKbps: 150 };
    /** the join profile, sent again (encrypted) on every rejoin */
    this.profile = /** @type {any} */ ({});
    /** true while we mean to be in the room (between join and leave/removal) */
    this.active = false;
    this.seq = 0;
    /** @type {Map<string, ReplayWindow>} */
    this.replay = new Map();
    this.undecryptable = 0;
    /** @type {Set<string>} peers whose messages did not decrypt */
    this.badSenders = new Set();
    this.replayed = 0;
    /** @type {ReturnType<typeof setTimeout> | null} */
    this.iceTimer = null;
    this.connectedOnce = false;
    /** rejoins after a reconnect, and how many of them took the old peer over (resume) */
    this.rejoins = 0;
    this.resumes = 0;
    /** onion media relay: who receives through it, and our own wish to */
    /** @type {Set<string>} */
    this.relayReceivers = new Set();
    /** receivers that want only some senders (the others want everyone) */
    /** @type {Map<string, Set<string>>} */
    this.relayFrom = new Map();
    this.needRelay = false;
    /** the senders we want through the relay (null: everyone) */
    /** @type {string[] | null} */
    this.needFrom = null;
    /** @type {MediaCipher | null} */
    this.mediaCipher = null;
    this.mediaStats = { received: 0, undecryptable: 0, sent: 0, sentBytes: 0, receivedBytes: 0 };
    this._wire();
  }

  /**
   * @param {string} type
   * @param {any} [detail]
   */
  _fire(type, detail = {}) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  _wire() {
    const s = this.socket;
    s.on('connect', () => {
      const again = this.connectedOnce;
      this.connectedOnce = true;
      this._fire('status', { state: 'connected' });
      if (again && this.active && this.room) this._rejoin();
    });
    s.on('disconnect', (/** @type {string} */ reason) => {
      this._fire('status', { state: this.active ? 'reconnecting' : 'closed', reason });
    });
    s.on('connect_error', (/** @type {Error} */ err) => {
      this._fire('status', { state: 'reconnecting', reason: String(err && err.message) });
    });
    s.on('joined', (/** @type {any} */ p) => this._onJoined(p));
    s.on('left', (/** @type {any} */ p) => {
      if (!this._mine(p) || typeof p.peer !== 'string') return;
      if (p.peer === this.self) return;
      this.peers.delete(p.peer);
      this._fire('peer-left', { peer: p.peer, reason: p.reason });
    });
    s.on('host', (/** @type {any} */ p) => {
      if (!this._mine(p)) return;
      this.host = p.peer;
      this._fire('host', { peer: p.peer });
    });
    // the host removed someone: the room's restore ticket changed (the removed peer's old one
    // no longer passes the lock of the room when it comes back after a restart)
    s.on('restore', (/** @type {any} */ p) => {
      if (this._mine(p) && typeof p.restore === 'string') this.restore = p.restore;
    });
    s.on('host-restore', (/** @type {any} */ p) => {
      if (this._mine(p) && typeof p.hostRestore === 'string') this.hostRestore = p.hostRestore;
    });
    s.on('locked', (/** @type {any} */ p) => {
      if (!this._mine(p)) return;
      this.locked = !!p.locked;
      this._fire('locked', { locked: this.locked });
    });
    s.on('removed', (/** @type {any} */ p) => {
      if (!this._mine(p)) return;
      this.active = false;
      this._clearIceTimer();
      this._fire('removed', {});
    });
    s.on('message', (/** @type {any} */ p) => this._onSealed('message', p, '*'));
    s.on('connection', (/** @type {any} */ p) => this._onSealed('connection', p, this.self));
    s.on('connection/shareScreen', (/** @type {any} */ p) => this._onSealed('screen', p, '*', true));
    s.on('connection/unshareScreen',
      (/** @type {any} */ p) => this._onSealed('screen', p, '*', false));
    s.on('media/receivers', (/** @type {any} */ p) => {
      if (!this._mine(p) || !Array.isArray(p.peers)) return;
      this._setReceivers(p.peers, p.from);
    });
    s.on('media', (/** @type {any} */ p, /** @type {any} */ ack) => {
      // acknowledge at once: the server sends more only as chunks are acknowledged
      if (typeof ack === 'function') ack();
      this._onMedia(p);
    });
    s.on('media/keyframe', (/** @type {any} */ p) => {
      if (!this._mine(p) || (p.stream !== 'a' && p.stream !== 'v')) return;
      this._fire('keyframe', { from: p.from, stream: p.stream });
    });
    s.on('error', (/** @type {any} */ e) => {
      if (e && typeof e === 'object' && typeof e.code === 'string') this._fire('server-error', e);
    });
  }

  /** @param {any} p */
  _mine(p) {
    return p && typeof p === 'object' && p.room === this.room;
  }

  /**
   * Emits with an acknowledgement; resolves with the ack or rejects with a SignalingError.
   * @param {string} event
   * @param {object} payload
   * @returns {Promise<any>}
   */
  request(event, payload) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new SignalingError('timeout', ERROR_TEXT.timeout)), this.ackTimeoutMs);
      this.socket.emit(event, payload, (/** @type {any} */ ack) => {
        clearTimeout(timer);
        if (ack && ack.ok === true) {
          resolve(ack);
        } else {
          const err = (ack && ack.error) || {};
          const code = typeof err.code === 'string' ? err.code : 'bad_reply';
          reject(new SignalingError(code, ERROR_TEXT[code] || err.message || code));
        }
      });
    });
  }

  /** Waits until the socket is connected. */
  async connected() {
    if (this.socket.connected) return;
    this._fire('status', { state: 'connecting' });
    await new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(new SignalingError('timeout', ERROR_TEXT.timeout));
      }, this.ackTimeoutMs);
      const done = () => { clearTimeout(timer); resolve(undefined); };
      this.socket.on('connect', done);
      /** @param {any} err */
      const fail = (err) => {
        if (err && err.message === 'server_full') {
          clearTimeout(timer);
          reject(new SignalingError('server_full', ERROR_TEXT.server_full));
        }
      };
      this.socket.on('connect_error', fail);
      this.socket.connect();
    });
  }

  /**
   * Creates a room (we become its host). The room key must already be chosen.
   * @returns {Promise<string>} the room id
   */
  async create() {
    await this.connected();
    const ack = await this.request('create', {});
    await this._entered(ack, false);
    return /** @type {string} */ (this.room);
  }

  /**
   * Joins a room with an encrypted profile (e.g. `{name}`).
   * @param {string} room
   * @param {any} profile
   */
  async join(room, profile) {
    await this.connected();
    if (!this.cipher || this.cipher.room !== room) {
      this.cipher = await RoomCipher.create(this.keyBytes, room);
    }
    this.profile = profile;
    const meta = await this.cipher.seal('meta', '', '*', profile);
    const ack = await this.request('join', { room, meta });
    await this._entered(ack, false);
  }

  /** Updates the profile kept for rejoins (peers get it from {@link broadcast} too). */
  setProfile(/** @type {any} */ profile) {
    this.profile = profile;
  }

  async _rejoin() {
    const room = /** @type {string} */ (this.room);
    const before = this.self;
    const wasLocked = this.locked;
    const wasHost = !!before && this.host === before;
    try {
      const meta = this.cipher ? await this.cipher.seal('meta', '', '*', this.profile) : '';
      /** @type {Record<string, string>} */
      const payload = { room, meta };
      if (this.resume) payload.resume = this.resume;
      if (this.restore) payload.restore = this.restore;
      if (this.hostRestore) payload.hostRestore = this.hostRestore;
      const ack = await this.request('join', payload);
      this.rejoins += 1;
      if (ack.peer === before) this.resumes += 1;
      await this._entered(ack, ack.peer === before);
      // a restarted server brought the room back from its ticket, unlocked: its host locks it
      // again (the others of the call still get in with their tickets for a while); anyone
      // else hears that the lock is gone
      if (ack.peer !== before && wasLocked && !this.locked) {
        const isHost = this.host === this.self;
        let relocked = false;
        if (wasHost && isHost) {
          try {
            await this.lock(true);
            this.locked = true;
            relocked = true;
          } catch { /* said below */ }
        }
        if (!relocked) this._fire('lock-lost', { wasHost, isHost });
      }
    } catch (e) {
      const err = /** @type {SignalingError} */ (e);
      this.active = false;
      this._fire('rejoin-failed', { code: err.code, message: err.message });
    }
  }

  /**
   * @param {any} ack
   * @param {boolean} resumed
   */
  async _entered(ack, resumed) {
    if (typeof ack.room !== 'string' || typeof ack.peer !== 'string') {
      throw new SignalingError('bad_reply', 'the server sent an unexpected reply');
    }
    if (!this.cipher || this.cipher.room !== ack.room) {
      this.cipher = await RoomCipher.create(this.keyBytes, ack.room);
    }
    if (!resumed) {
      this.seq = 0;
      this.replay.clear();
    }
    if (ack.room !== this.room) this.hostRestore = null;
    if (typeof ack.hostRestore === 'string') this.hostRestore = ack.hostRestore;
    this.room = ack.room;
    this.self = ack.peer;
    this.host = ack.host;
    this.resume = ack.resume;
    this.restore = typeof ack.restore === 'string' ? ack.restore : null;
    this.locked = !!ack.locked;
    this.capacity = ack.capacity;
    if (ack.media && typeof ack.media.uploadKbps === 'number') this.media = ack.media;
    if (!this.mediaCipher || this.mediaCipher.room !== ack.room) {
      this.mediaCipher = new MediaCipher(this.keyBytes, ack.room);
    }
    this._setIce(ack);
    // a rejoin may bring new TURN credentials (a restarted server has a new coturn secret):
    // links made from now on must use them
    this._fire('ice', this.ice);
    this.active = true;
    this.peers.clear();
    /** @type {PeerInfo[]} */
    const peers = [];
    for (const p of Array.isArray(ack.peers) ? ack.peers : []) {
      if (!p || typeof p.peer !== 'string') continue;
      const profile = await this._openMeta(p.peer, p.meta);
      this.peers.set(p.peer, { profile });
      peers.push({ peer: p.peer, profile });
    }
    this._fire('room', {
      room: this.room, self: this.self, host: this.host, locked: this.locked,
      capacity: this.capacity, peers, resumed,
    });
    if (this.needRelay) {
      this.request('media/need', this._needBody())
        .then((a) => this._setReceivers(a.receivers, a.from)).catch(() => {});
    } else {
      this._setReceivers(Array.isArray(ack.mediaRelay) ? ack.mediaRelay : [], ack.mediaRelayFrom);
    }
  }

  _needBody() {
    /** @type {{room: string | null, need: boolean, from?: string[]}} */
    const body = { room: this.room, need: this.needRelay };
    if (this.needRelay && this.needFrom) body.from = this.needFrom;
    return body;
  }

  /**
   * @param {unknown} peers the receivers
   * @param {unknown} from receiver -> the senders it wants, for those that want only some
   */
  _setReceivers(peers, from) {
    const ids = (/** @type {unknown} */ v) => (Array.isArray(v)
      ? v.filter((x) => typeof x === 'string').map((x) => String(x)) : []);
    const next = new Set(ids(peers));
    /** @type {Map<string, Set<string>>} */
    const nextFrom = new Map();
    if (from && typeof from === 'object') {
      for (const [r, senders] of Object.entries(from)) {
        if (next.has(r)) nextFrom.set(r, new Set(ids(senders)));
      }
    }
    const wantedBefore = this._wanting();
    const key = (/** @type {Set<string>} */ set, /** @type {Map<string, Set<string>>} */ m) =>
      JSON.stringify([...set].sort().map((r) => [r, m.has(r) ? [...(m.get(r) || [])].sort() : 0]));
    if (key(next, nextFrom) === key(this.relayReceivers, this.relayFrom)) return;
    this.relayReceivers = next;
    this.relayFrom = nextFrom;
    const added = [...this._wanting()].filter((r) => !wantedBefore.has(r));
    this._fire('relay-receivers', { peers: [...next], added });
  }

  /** The other receivers that want our media. @returns {Set<string>} */
  _wanting() {
    return new Set([...this.relayReceivers].filter((r) => r !== this.self
      && (!this.relayFrom.has(r) || /** @type {Set<string>} */ (this.relayFrom.get(r)).has(
        /** @type {string} */ (this.self)))));
  }

  /** Whether anyone else wants our media through the relay (then we feed it). */
  wantedByRelay() {
    return this._wanting().size > 0;
  }

  /**
   * Whether `peer` takes our media through the relay.
   * @param {string} peer
   */
  relayWants(peer) {
    return this._wanting().has(peer);
  }

  /**
   * Receive media through the onion relay: from everyone (`from` null: this browser has no
   * WebRTC, or it found no way to use it), or only from the listed senders (peers that have no
   * WebRTC; the rest reach us directly). `need` false stops it.
   * @param {boolean} need
   * @param {string[] | null} [from]
   */
  async setNeedRelay(need, from = null) {
    this.needRelay = need;
    this.needFrom = need && from ? [...from] : null;
    if (!this.active || !this.room) return;
    const ack = await this.request('media/need', this._needBody());
    this._setReceivers(ack.receivers, ack.from);
  }

  /** @param {any} p */
  async _onMedia(p) {
    if (!this._mine(p) || typeof p.from !== 'string' || !this.mediaCipher) return;
    if ((p.stream !== 'a' && p.stream !== 'v') || typeof p.seq !== 'number'
      || typeof p.key !== 'boolean' || typeof p.ts !== 'number') return;
    let data;
    try {
      data = await this.mediaCipher.open(p.from, p.stream, p.seq, p.key, p.ts, p.data);
    } catch {
      this.mediaStats.undecryptable += 1;
      this._undecryptable(p.from, 'media');
      return;
    }
    this.mediaStats.received += 1;
    this.mediaStats.receivedBytes += data.byteLength;
    this._fire('media', { from: p.from, stream: p.stream, seq: p.seq, key: p.key, ts: p.ts, data });
  }

  /**
   * Encrypts and sends one media chunk to the relay (fire and forget).
   * @param {string} stream
   * @param {number} seq
   * @param {boolean} key
   * @param {number} ts
   * @param {Uint8Array} plain
   */
  async sendMedia(stream, seq, key, ts, plain) {
    if (!this.active || !this.room || !this.self || !this.mediaCipher || !this.socket.connected) {
      return false;
    }
    const data = await this.mediaCipher.seal(this.self, stream, seq, key, ts, plain);
    this.socket.emit('media', { room: this.room, stream, seq, key, ts, data });
    this.mediaStats.sent += 1;
    this.mediaStats.sentBytes += data.byteLength;
    return true;
  }

  /**
   * Asks a sender for a new recording of a stream (after a gap, or on join).
   * @param {string} to
   * @param {string} stream
   */
  askKeyframe(to, stream) {
    if (!this.active || !this.socket.connected) return;
    this.socket.emit('media/keyframe', { room: this.room, to, stream });
  }

  /** @param {any} ack */
  _setIce(ack) {
    if (!Array.isArray(ack.iceServers)) return;
    this.ice = {
      iceServers: ack.iceServers,
      iceTransportPolicy: ack.iceTransportPolicy === 'relay' ? 'relay' : 'all',
      iceExpires: typeof ack.iceExpires === 'number' ? ack.iceExpires : 0,
    };
    this._scheduleIceRefresh();
  }

  _clearIceTimer() {
    if (this.iceTimer) clearTimeout(this.iceTimer);
    this.iceTimer = null;
  }

  _scheduleIceRefresh() {
    this._clearIceTimer();
    if (!this.ice.iceExpires || !this.ice.iceServers.length) return;
    const inS = this.ice.iceExpires - this.now() / 1000 - ICE_REFRESH_LEAD_S;
    const ms = Math.min(Math.max(inS * 1000, 10000), 2 ** 31 - 1);
    this.iceTimer = setTimeout(() => { this.refreshIce().catch(() => {}); }, ms);
  }

  /** Asks for fresh TURN credentials (`ice` event) and announces them. */
  async refreshIce() {
    if (!this.active || !this.room) return;
    const ack = await this.request('ice', { room: this.room });
    this._setIce(ack);
    this._fire('ice', this.ice);
  }

  /**
   * @param {string} peer
   * @param {unknown} meta
   */
  async _openMeta(peer, meta) {
    if (typeof meta !== 'string' || !meta || !this.cipher) return null;
    try {
      return await this.cipher.open('meta', '', '*', meta);
    } catch {
      this._undecryptable(peer, 'meta');
      return null;
    }
  }

  /** @param {any} p */
  async _onJoined(p) {
    if (!this._mine(p) || typeof p.peer !== 'string' || p.peer === this.self) return;
    const profile = await this._openMeta(p.peer, p.meta);
    this.peers.set(p.peer, { profile });
    if (!p.resumed) this.replay.delete(p.peer);
    this._fire('peer-joined', { peer: p.peer, profile, resumed: !!p.resumed });
  }

  /**
   * @param {string} from
   * @param {string} channel
   */
  _undecryptable(from, channel) {
    this.undecryptable += 1;
    this.badSenders.add(from);
    this._fire('undecryptable', {
      from, channel, count: this.undecryptable, senders: this.badSenders.size,
    });
  }

  /**
   * @param {string} channel
   * @param {any} p
   * @param {string | null} to
   * @param {boolean} [sharing]
   */
  async _onSealed(channel, p, to, sharing) {
    if (!this._mine(p) || typeof p.from !== 'string' || !this.cipher || !to) return;
    if (channel === 'screen' && (p.data === undefined || p.data === '')) {
      this._fire('screen', { from: p.from, sharing, body: null });
      return;
    }
    let value;
    try {
      value = await this.cipher.open(channel, p.from, to, p.data);
    } catch (e) {
      if (e instanceof DecryptError) this._undecryptable(p.from, channel);
      return;
    }
    if (!value || typeof value !== 'object') return;
    let win = this.replay.get(p.from);
    if (!win) this.replay.set(p.from, (win = new ReplayWindow()));
    if (!win.accept(value.seq)) {
      this.replayed += 1;
      return;
    }
    const body = value.body;
    if (channel === 'message') this._fire('message', { from: p.from, body });
    else if (channel === 'connection') this._fire('signal', { from: p.from, body });
    else this._fire('screen', { from: p.from, sharing, body });
  }

  /**
   * @param {string} channel
   * @param {string} to
   * @param {any} body
   */
  async _seal(channel, to, body) {
    if (!this.cipher || !this.self) throw new SignalingError('not_in_room', 'not in a room');
    this.seq += 1;
    return this.cipher.seal(channel, this.self, to, { seq: this.seq, ts: this.now(), body });
  }

  /**
   * Sends an encrypted room-wide message (chat, profile, mute state).
   * @param {any} body
   */
  async broadcast(body) {
    const data = await this._seal('message', '*', body);
    return this.request('message', { room: this.room, data });
  }

  /**
   * Sends encrypted signaling (SDP, ICE) to one peer. Fire-and-forget: no ack waited for.
   * @param {string} to
   * @param {any} body
   */
  async signal(to, body) {
    if (!this.active || !this.socket.connected) return;
    const data = await this._seal('connection', to, body);
    this.socket.emit('connection', { room: this.room, to, data });
  }

  /**
   * @param {boolean} sharing
   * @param {any} [body]
   */
  async shareScreen(sharing, body = {}) {
    const data = await this._seal('screen', '*', body);
    return this.request(sharing ? 'connection/shareScreen' : 'connection/unshareScreen',
      { room: this.room, data });
  }

  /** @param {boolean} locked */
  lock(locked) {
    return this.request('lock', { room: this.room, locked });
  }

  /** @param {string} peer */
  remove(peer) {
    return this.request('remove', { room: this.room, peer });
  }

  async leave() {
    this.active = false;
    this._clearIceTimer();
    if (this.room && this.socket.connected) {
      try {
        await this.request('leave', { room: this.room });
      } catch { /* leaving anyway */ }
    }
    this.peers.clear();
  }

  /** Leaves and closes the socket. */
  async close() {
    await this.leave();
    this.socket.disconnect();
    this._fire('status', { state: 'closed' });
  }
}
