// @ts-check
/**
 * Room key and message sealing for incognito-onion. DOM-free: runs in browsers and in node.
 *
 * The room key is 256 random bits made by the creator's browser, carried only in the URL
 * fragment (`#<key>`, never sent to the server). HKDF-SHA-256 turns it (salted with the room id,
 * so one key cannot be replayed into another room) into a non-extractable AES-256-GCM key.
 *
 * A sealed message is `base64url(version(1) | nonce(12) | ciphertext+tag)`. The nonce is fresh
 * for every message. The associated data names the protocol version, the room, the channel
 * (message / connection / meta / screen), the sender's peer id and the recipient, so the server
 * can neither forge, nor re-address, nor move a message from one channel or room to another.
 * Plaintext is JSON padded with trailing spaces to a size bucket, so lengths leak only roughly.
 */

const VERSION = 1;
const NONCE_BYTES = 12;
const te = new TextEncoder();
const td = new TextDecoder('utf-8', { fatal: true });

/** Length of a room key made here, in bytes (256 bits). */
export const KEY_BYTES = 32;
/** Shortest key accepted from a link, in bytes (128 bits). */
export const MIN_KEY_BYTES = 16;

/** Thrown for a missing or malformed room key in the URL fragment. */
export class KeyError extends Error {}
/** Thrown when a sealed message does not open (wrong key, tampered, wrong sender/room). */
export class DecryptError extends Error {}

/** @returns {Crypto} */
function webcrypto() {
  const c = globalThis.crypto;
  if (!c || !c.subtle) {
    throw new Error('WebCrypto (crypto.subtle) is not available: this page needs a secure context');
  }
  return c;
}

const B64URL = /^[A-Za-z0-9_-]*$/;

/**
 * @param {Uint8Array} bytes
 * @returns {string} base64url without padding
 */
export function b64uEncode(bytes) {
  let bin = '';
  for (let i = 0; i < bytes.length; i += 0x8000) {
    bin += String.fromCharCode.apply(null, Array.from(bytes.subarray(i, i + 0x8000)));
  }
  return btoa(bin).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

/**
 * Strict base64url decoding (no padding, no other characters).
 * @param {string} text
 * @returns {Uint8Array}
 */
export function b64uDecode(text) {
  if (typeof text !== 'string' || !B64URL.test(text) || text.length % 4 === 1) {
    throw new TypeError('not base64url');
  }
  const b64 = text.replace(/-/g, '+').replace(/_/g, '/') + '==='.slice((text.length + 3) % 4);
  const bin = atob(b64);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

/** A new room key for the URL fragment: 43 base64url characters (256 bits). */
export function generateRoomKey() {
  const key = new Uint8Array(KEY_BYTES);
  webcrypto().getRandomValues(key);
  return b64uEncode(key);
}

/**
 * Reads the room key from a URL fragment (`#<key>`, the `#` optional).
 * @param {string} fragment
 * @returns {Uint8Array} the key bytes, at least {@link MIN_KEY_BYTES}
 */
export function parseRoomKey(fragment) {
  const text = (fragment || '').replace(/^#/, '').trim();
  if (!text) {
    throw new KeyError('The link has no room key (the part after #). Ask for the full link.');
  }
  let bytes;
  try {
    bytes = b64uDecode(text);
  } catch {
    throw new KeyError('The room key in the link is damaged (it has characters a key never has). '
      + 'Ask for the full link again.');
  }
  if (bytes.length < MIN_KEY_BYTES) {
    throw new KeyError('The room key in the link is too short: the link was probably cut off. '
      + 'Ask for the full link again.');
  }
  return bytes;
}

/**
 * HKDF-SHA-256(room key, salt = "incognito-onion/1 room " + room id) → AES-256-GCM key.
 * @param {Uint8Array} keyBytes
 * @param {string} roomId
 * @returns {Promise<CryptoKey>}
 */
export async function deriveRoomKey(keyBytes, roomId) {
  const subtle = webcrypto().subtle;
  const ikm = await subtle.importKey('raw', /** @type {BufferSource} */ (keyBytes), 'HKDF', false,
    ['deriveKey']);
  return subtle.deriveKey(
    {
      name: 'HKDF',
      hash: 'SHA-256',
      salt: te.encode(`incognito-onion/${VERSION} room ${roomId}`),
      info: te.encode('message encryption (AES-256-GCM)'),
    },
    ikm,
    { name: 'AES-GCM', length: 256 },
    false,
    ['encrypt', 'decrypt'],
  );
}

/**
 * Pads JSON text with spaces (which JSON.parse ignores) to a size bucket.
 * @param {string} json
 */
export function pad(json) {
  const n = te.encode(json).length;
  const bucket = n <= 256 ? 256 : n <= 1024 ? 1024 : Math.ceil(n / 2048) * 2048;
  return json + ' '.repeat(bucket - n);
}

/**
 * The associated data bound to each message.
 * @param {string} room
 * @param {string} channel
 * @param {string} from sender peer id ('' for the join profile, whose id is not known yet)
 * @param {string} to recipient peer id, or '*' for the whole room
 */
export function associatedData(room, channel, from, to) {
  return te.encode(JSON.stringify([`incognito-onion/${VERSION}`, room, channel, from, to]));
}

/** Seals and opens room messages with the room's derived key. */
export class RoomCipher {
  /**
   * @param {CryptoKey} key
   * @param {string} room
   */
  constructor(key, room) {
    this.key = key;
    this.room = room;
  }

  /**
   * @param {Uint8Array} keyBytes
   * @param {string} room
   */
  static async create(keyBytes, room) {
    return new RoomCipher(await deriveRoomKey(keyBytes, room), room);
  }

  /**
   * @param {string} channel
   * @param {string} from
   * @param {string} to
   * @param {unknown} value any JSON value
   * @returns {Promise<string>} base64url ciphertext
   */
  async seal(channel, from, to, value) {
    const c = webcrypto();
    const nonce = new Uint8Array(NONCE_BYTES);
    c.getRandomValues(nonce);
    const plain = te.encode(pad(JSON.stringify(value)));
    const ct = new Uint8Array(await c.subtle.encrypt(
      { name: 'AES-GCM', iv: nonce, additionalData: associatedData(this.room, channel, from, to) },
      this.key, plain));
    const out = new Uint8Array(1 + NONCE_BYTES + ct.length);
    out[0] = VERSION;
    out.set(nonce, 1);
    out.set(ct, 1 + NONCE_BYTES);
    return b64uEncode(out);
  }

  /**
   * @param {string} channel
   * @param {string} from
   * @param {string} to
   * @param {unknown} data what the server relayed
   * @returns {Promise<any>} the JSON value
   * @throws {DecryptError}
   */
  async open(channel, from, to, data) {
    let bytes;
    try {
      bytes = b64uDecode(/** @type {string} */ (data));
    } catch {
      throw new DecryptError('not base64url');
    }
    if (bytes.length < 1 + NONCE_BYTES + 16 || bytes[0] !== VERSION) {
      throw new DecryptError('not a sealed message');
    }
    let plain;
    try {
      plain = await webcrypto().subtle.decrypt(
        {
          name: 'AES-GCM',
          iv: bytes.slice(1, 1 + NONCE_BYTES),
          additionalData: associatedData(this.room, channel, from, to),
        },
        this.key, bytes.slice(1 + NONCE_BYTES));
    } catch {
      throw new DecryptError('does not decrypt with this room key');
    }
    try {
      return JSON.parse(td.decode(plain));
    } catch {
      throw new DecryptError('decrypted text is not JSON');
    }
  }
}

/**
 * Accepts each sequence number once within a sliding window (like IPsec's), so the server cannot
 * replay an old message, while messages that arrive slightly out of order still pass.
 */
export class ReplayWindow {
  /** @param {number} [size] */
  constructor(size = 256) {
    this.size = size;
    this.max = -1;
    /** @type {Set<number>} */
    this.seen = new Set();
  }

  /**
   * @param {unknown} seq
   * @returns {boolean} true the first time a sequence number within the window is seen
   */
  accept(seq) {
    if (typeof seq !== 'number' || !Number.isSafeInteger(seq) || seq < 0) return false;
    if (seq <= this.max - this.size || this.seen.has(seq)) return false;
    this.seen.add(seq);
    if (seq > this.max) {
      this.max = seq;
      for (const s of this.seen) if (s <= this.max - this.size) this.seen.delete(s);
    }
    return true;
  }
}

/* ---------------------------------------------------------------- onion media relay */

/**
 * The associated data of one media chunk (docs/protocol.md "Media relay").
 * @param {string} room
 * @param {string} from
 * @param {string} stream
 * @param {number} seq
 * @param {boolean} key
 * @param {number} ts
 */
export function mediaAssociatedData(room, from, stream, seq, key, ts) {
  return te.encode(JSON.stringify([`incognito-onion/${VERSION}`, room, 'media', from, stream, seq,
    key, ts]));
}

/**
 * The nonce of one media chunk: stream byte | 3 zero bytes | seq (64-bit big-endian). Unique
 * for one sender key, because seq only grows and a peer id (in the key) is new for every join.
 * @param {string} stream 'a' or 'v'
 * @param {number} seq
 */
export function mediaNonce(stream, seq) {
  const n = new Uint8Array(NONCE_BYTES);
  n[0] = stream.charCodeAt(0);
  new DataView(n.buffer).setBigUint64(4, BigInt(seq));
  return n;
}

/**
 * Seals and opens media chunks. Each sender has its own key:
 * HKDF-SHA-256(room key, salt "incognito-onion/1 media <room>", info "media <peer id>").
 */
export class MediaCipher {
  /**
   * @param {Uint8Array} keyBytes
   * @param {string} room
   */
  constructor(keyBytes, room) {
    this.keyBytes = keyBytes;
    this.room = room;
    /** @type {Map<string, Promise<CryptoKey>>} */
    this.keys = new Map();
  }

  /** @param {string} peer */
  keyFor(peer) {
    let k = this.keys.get(peer);
    if (!k) {
      const subtle = webcrypto().subtle;
      k = subtle.importKey('raw', /** @type {BufferSource} */ (this.keyBytes), 'HKDF', false,
        ['deriveKey']).then((ikm) => subtle.deriveKey(
        {
          name: 'HKDF',
          hash: 'SHA-256',
          salt: te.encode(`incognito-onion/${VERSION} media ${this.room}`),
          info: te.encode(`media ${peer}`),
        },
        ikm, { name: 'AES-GCM', length: 256 }, false, ['encrypt', 'decrypt']));
      this.keys.set(peer, k);
    }
    return k;
  }

  /**
   * @param {string} from
   * @param {string} stream
   * @param {number} seq
   * @param {boolean} key
   * @param {number} ts
   * @param {Uint8Array} data
   * @returns {Promise<Uint8Array>}
   */
  async seal(from, stream, seq, key, ts, data) {
    const ct = await webcrypto().subtle.encrypt(
      { name: 'AES-GCM', iv: mediaNonce(stream, seq),
        additionalData: mediaAssociatedData(this.room, from, stream, seq, key, ts) },
      await this.keyFor(from), /** @type {BufferSource} */ (data));
    return new Uint8Array(ct);
  }

  /**
   * @param {string} from
   * @param {string} stream
   * @param {number} seq
   * @param {boolean} key
   * @param {number} ts
   * @param {unknown} data what the server relayed
   * @returns {Promise<Uint8Array>}
   * @throws {DecryptError}
   */
  async open(from, stream, seq, key, ts, data) {
    /** @type {Uint8Array} */
    let bytes;
    if (data instanceof ArrayBuffer) bytes = new Uint8Array(data);
    else if (ArrayBuffer.isView(data)) bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    else throw new DecryptError('not binary');
    try {
      return new Uint8Array(await webcrypto().subtle.decrypt(
        { name: 'AES-GCM', iv: mediaNonce(stream, seq),
          additionalData: mediaAssociatedData(this.room, from, stream, seq, key, ts) },
        await this.keyFor(from), /** @type {BufferSource} */ (bytes)));
    } catch {
      throw new DecryptError('media does not decrypt with this room key');
    }
  }
}
