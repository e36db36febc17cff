// @ts-check
/**
 * The onion media relay, browser side (docs/protocol.md "Media relay"): for people whose browser
 * has no WebRTC (Tor Browser), media travels as encrypted WebM chunks over the signaling socket.
 *
 * - {@link RelaySender}: MediaRecorder on the microphone and on the camera, two WebM streams
 *   (`a` Opus, `v` VP8) in short slices; each slice is handed to `send` (which encrypts it).
 *   `restart(stream)` starts a new recording: a fresh init segment and a key frame, for a
 *   receiver that joins or lost chunks.
 * - {@link RelayPlayer}: one per remote sender; feeds MediaSource (`audio/webm; codecs="opus"` on
 *   an <audio>, `video/webm; codecs="vp8"` on a <video>, each separately so sound goes on when
 *   video stalls), keeps the buffer short (jumps to the live edge), asks for a new recording
 *   after a gap.
 *
 * Uses media objects (MediaRecorder, MediaSource, media elements) but creates no DOM.
 */

export const TIMESLICE_MS = 100;
const RESTART_MIN_MS = 1000;
const KEY_ASK_MIN_MS = 1000;
/** Behind the live edge by more than this, a player jumps forward (seconds). */
const MAX_LAG_S = { a: 0.5, v: 0.5 };
/** Where a jump lands, behind the live edge (seconds). */
const TARGET_LAG_S = 0.12;

/** @type {Record<string, string>} */
const RECORD_MIME = { a: 'audio/webm;codecs=opus', v: 'video/webm;codecs=vp8' };
/** @type {Record<string, string>} */
export const PLAY_MIME = { a: 'audio/webm; codecs="opus"', v: 'video/webm; codecs="vp8"' };

/**
 * Can this browser play relayed media (MediaSource with WebM Opus and VP8)?
 * @param {any} g the global object
 */
export function canPlayRelay(g) {
  const MS = g.MediaSource;
  return typeof MS === 'function' && typeof MS.isTypeSupported === 'function'
    && MS.isTypeSupported(PLAY_MIME.a) && MS.isTypeSupported(PLAY_MIME.v);
}

/**
 * Can this browser feed the relay (MediaRecorder with WebM Opus / VP8)?
 * @param {any} g
 */
export function canFeedRelay(g) {
  const MR = g.MediaRecorder;
  return typeof MR === 'function' && typeof MR.isTypeSupported === 'function'
    && MR.isTypeSupported(RECORD_MIME.a) && MR.isTypeSupported(RECORD_MIME.v);
}

/**
 * Video quality steps of the relay sender, best first: a share of the full video bitrate, a
 * frame rate and a downscale factor. Lower steps cost less upload and less of every receiver's
 * link; audio is never touched.
 */
export const VIDEO_LADDER = [
  { share: 1, fps: 30, scale: 1 },
  { share: 0.5, fps: 15, scale: 1.5 },
  { share: 0.25, fps: 10, scale: 2 },
  { share: 0.12, fps: 5, scale: 3 },
];
/** Trouble reports within this window (ms) that make the sender step down. */
const TROUBLE_WINDOW_MS = 4000;
const TROUBLE_TO_STEP_DOWN = 2;
/** Calm for this long (ms) lets the sender step back up one level. */
const CALM_TO_STEP_UP_MS = 8000;
/** Least time (ms) between two level changes (each one starts a new recording). */
const MIN_CHANGE_MS = 2000;

/**
 * Adapts the relay sender's video to what the path can carry, before latency grows: trouble is
 * a chunk this browser dropped because its socket backed up, or a chunk the server dropped for
 * a slow receiver (the server then asks for a key frame with `from: null`). Pure: the caller
 * passes the time.
 */
export class VideoLadder {
  /** @param {number} [levels] */
  constructor(levels = VIDEO_LADDER.length) {
    this.levels = levels;
    this.level = 0;
    /** @type {number[]} */ this.trouble = [];
    this.lastChange = -Infinity;
    this.lastTrouble = -Infinity;
    this.downs = 0;
    this.ups = 0;
  }

  /**
   * Something was dropped. Returns true if the level went down.
   * @param {number} now ms
   */
  report(now) {
    this.lastTrouble = now;
    this.trouble = this.trouble.filter((t) => now - t < TROUBLE_WINDOW_MS);
    this.trouble.push(now);
    if (this.trouble.length < TROUBLE_TO_STEP_DOWN || this.level >= this.levels - 1
      || now - this.lastChange < MIN_CHANGE_MS) return false;
    this.level += 1;
    this.downs += 1;
    this.lastChange = now;
    this.trouble = [];
    return true;
  }

  /**
   * Called now and then: after a calm spell, one level up. Returns true if the level went up.
   * @param {number} now ms
   */
  tick(now) {
    if (this.level === 0 || now - Math.max(this.lastTrouble, this.lastChange) < CALM_TO_STEP_UP_MS) {
      return false;
    }
    this.level -= 1;
    this.ups += 1;
    this.lastChange = now;
    return true;
  }
}

/**
 * @typedef {(stream: string, seq: number, key: boolean, ts: number, data: Uint8Array)
 *   => Promise<boolean> | boolean} ChunkSink
 */

class Recording {
  /**
   * @param {RelaySender} owner
   * @param {string} stream
   */
  constructor(owner, stream) {
    this.owner = owner;
    this.stream = stream;
    /** @type {MediaStreamTrack | null} */ this.track = null;
    /** @type {MediaRecorder | null} */ this.rec = null;
    this.seq = 0;
    this.generation = 0;
    this.lastStart = 0;
    /** @type {ReturnType<typeof setTimeout> | null} */ this.pending = null;
    /** the next chunk of this generation must be sent as `key` */
    this.keyNext = true;
    /** a chunk was dropped here (congestion): skip until the next recording */
    this.broken = false;
    /** chunks are sent in order, one after the other */
    /** @type {Promise<void>} */ this.chain = Promise.resolve();
    this.restarts = 0;
    /** a lower-resolution, lower-rate clone of the video track, for ladder levels > 0 */
    /** @type {MediaStreamTrack | null} */ this.scaled = null;
  }

  /** The track to record: the camera itself, or a scaled-down clone at a lower ladder level. */
  _source() {
    const track = /** @type {MediaStreamTrack} */ (this.track);
    const step = VIDEO_LADDER[this.owner.ladder.level];
    if (this.stream !== 'v' || step.scale === 1) return track;
    const clone = track.clone();
    const set = track.getSettings();
    /** @type {MediaTrackConstraints} */
    const c = { frameRate: { max: step.fps } };
    if (set.width && set.height) {
      // even sizes: odd ones are legal VP8 but trip up some decoders and compositors
      c.width = { max: 2 * Math.round(set.width / step.scale / 2) };
      c.height = { max: 2 * Math.round(set.height / step.scale / 2) };
    }
    // best effort: a browser that cannot rescale still records at the lower bitrate
    clone.applyConstraints(c).catch((e) => this.owner._log('scale', e));
    this.scaled = clone;
    return clone;
  }

  /** @param {MediaStreamTrack | null} track */
  setTrack(track) {
    if (track === this.track) return;
    this.track = track;
    this.start();
  }

  stop() {
    if (this.pending) clearTimeout(this.pending);
    this.pending = null;
    const rec = this.rec;
    this.rec = null;
    this.generation += 1;
    if (this.scaled) { this.scaled.stop(); this.scaled = null; }
    if (rec) {
      rec.ondataavailable = null;
      rec.onerror = null;
      try { if (rec.state !== 'inactive') rec.stop(); } catch { /* already stopped */ }
    }
  }

  start() {
    this.stop();
    if (!this.track || this.track.readyState === 'ended' || !this.owner.running) return;
    const gen = this.generation;
    const opts = this.stream === 'v'
      ? { mimeType: RECORD_MIME.v, videoBitsPerSecond: this.owner.currentVideoBps() }
      : { mimeType: RECORD_MIME.a, audioBitsPerSecond: this.owner.audioBps };
    let rec;
    try {
      rec = new MediaRecorder(new MediaStream([this._source()]), opts);
    } catch (e) {
      this.owner._log('recorder', this.stream, e);
      return;
    }
    this.rec = rec;
    this.keyNext = true;
    this.broken = false;
    this.lastStart = Date.now();
    this.restarts += 1;
    rec.ondataavailable = (ev) => {
      if (gen !== this.generation || !ev.data || ev.data.size === 0) return;
      const ts = Date.now();
      const blob = ev.data;
      this.chain = this.chain.then(async () => {
        if (gen !== this.generation) return;
        const data = new Uint8Array(await blob.arrayBuffer());
        if (gen !== this.generation || this.broken) return;
        const key = this.keyNext;
        if (!key && this.stream === 'v' && this.owner.congested()) {
          // the socket cannot keep up: drop video here, send a new recording when it can
          this.broken = true;
          this.owner.dropped += 1;
          if (!this.owner.trouble()) this.restart();
          return;
        }
        this.keyNext = false;
        this.seq += 1;
        await this.owner.sink(this.stream, this.seq, key, ts, data);
      }).catch((e) => this.owner._log('send', e));
    };
    rec.onerror = () => { this.restart(); };
    rec.start(this.owner.timeslice);
  }

  /** A new recording, at most once per RESTART_MIN_MS (a later request is merged). */
  restart() {
    if (!this.owner.running || this.pending) return;
    const wait = this.lastStart + RESTART_MIN_MS - Date.now();
    if (wait <= 0) {
      this.start();
      return;
    }
    this.pending = setTimeout(() => { this.pending = null; this.start(); }, wait);
  }
}

export class RelaySender {
  /**
   * @param {{ sink: ChunkSink, congested?: () => boolean, timesliceMs?: number,
   *   videoBps?: number, audioBps?: number, log?: (...a: any[]) => void }} o
   */
  constructor(o) {
    this.sink = o.sink;
    this.congested = o.congested || (() => false);
    this.timeslice = o.timesliceMs || TIMESLICE_MS;
    this.videoBps = o.videoBps || 400_000;
    this.audioBps = o.audioBps || 32_000;
    this._log = o.log || (() => {});
    this.running = false;
    this.dropped = 0;
    this.ladder = new VideoLadder();
    /** @type {ReturnType<typeof setInterval> | null} */ this.ladderTimer = null;
    /** @type {Record<string, Recording>} */
    this.rec = { a: new Recording(this, 'a'), v: new Recording(this, 'v') };
  }

  /** @param {{audio?: MediaStreamTrack | null, video?: MediaStreamTrack | null}} t */
  setTracks(t) {
    if ('audio' in t) this.rec.a.setTrack(t.audio || null);
    if ('video' in t) this.rec.v.setTrack(t.video || null);
  }

  start() {
    if (this.running) return;
    this.running = true;
    this.rec.a.start();
    this.rec.v.start();
    this.ladderTimer = setInterval(() => {
      if (this.ladder.tick(Date.now())) this.rec.v.start();
    }, 1000);
  }

  stop() {
    this.running = false;
    if (this.ladderTimer) clearInterval(this.ladderTimer);
    this.ladderTimer = null;
    this.rec.a.stop();
    this.rec.v.stop();
  }

  /** The video bitrate of the current ladder level. */
  currentVideoBps() {
    return Math.max(60_000, Math.round(this.videoBps * VIDEO_LADDER[this.ladder.level].share));
  }

  /**
   * Video was dropped on the way (here, or by the server for a slow receiver). Steps the video
   * down a level when that keeps happening (a new recording at the lower level starts at once);
   * returns true if it did.
   */
  trouble() {
    if (!this.ladder.report(Date.now())) return false;
    this._log('video down to level', this.ladder.level);
    this.rec.v.start();
    return true;
  }

  /** @param {string} [stream] 'a', 'v', or both */
  restart(stream) {
    for (const s of stream ? [stream] : ['a', 'v']) this.rec[s]?.restart();
  }

  get stats() {
    return {
      running: this.running, dropped: this.dropped,
      level: this.ladder.level, downs: this.ladder.downs, ups: this.ladder.ups,
      videoBps: this.currentVideoBps(),
      a: { seq: this.rec.a.seq, restarts: this.rec.a.restarts, on: !!this.rec.a.rec },
      v: { seq: this.rec.v.seq, restarts: this.rec.v.restarts, on: !!this.rec.v.rec,
        width: (this.rec.v.scaled || this.rec.v.track)?.getSettings().width || 0,
        fullWidth: this.rec.v.track?.getSettings().width || 0 },
    };
  }
}

/** One stream (audio or video) of one remote sender, played through MediaSource. */
class Track {
  /**
   * @param {RelayPlayer} player
   * @param {string} stream
   * @param {HTMLMediaElement} element
   */
  constructor(player, stream, element) {
    this.player = player;
    this.stream = stream;
    this.element = element;
    /** @type {MediaSource | null} */ this.ms = null;
    /** @type {SourceBuffer | null} */ this.sb = null;
    this.url = '';
    /** @type {Uint8Array[]} */ this.queue = [];
    this.waitingKey = true;
    this.lastSeq = -1;
    this.lastAsk = 0;
    this.appended = 0;
    this.dropped = 0;
    this.gaps = 0;
    this.jumps = 0;
    this.errors = 0;
    this.keys = 0;
    /** sender timestamp of the newest chunk appended (for latency) */
    this.lastTs = 0;
    this.lastArrival = 0;
    /** arrival - sender timestamp of recent chunks, ms (same clock only on one machine) */
    /** @type {number[]} */ this.latencies = [];
    /** key chunks whose plaintext starts with the WebM (EBML) magic */
    this.ebml = 0;
    this.reset = false;
    this.lastError = '';
    this.lastTrim = 0;
    this._open();
  }

  _open() {
    this.close();
    const ms = new MediaSource();
    this.ms = ms;
    this.sb = null;
    this.url = URL.createObjectURL(ms);
    ms.addEventListener('sourceopen', () => {
      if (this.ms !== ms) return;
      try {
        const sb = ms.addSourceBuffer(PLAY_MIME[this.stream]);
        sb.mode = 'sequence';
        sb.addEventListener('updateend', () => this._pump());
        sb.addEventListener('error', () => this._fail('sourcebuffer error'));
        this.sb = sb;
        this._pump();
      } catch (e) {
        this._fail(String(e));
      }
    }, { once: true });
    this.element.src = this.url;
    this.element.onerror = () => { if (this.ms === ms) this._fail('element error'); };
  }

  close() {
    if (this.url) URL.revokeObjectURL(this.url);
    this.url = '';
    this.ms = null;
    this.sb = null;
    this.queue = [];
  }

  /** @param {string} why */
  _fail(why) {
    this.errors += 1;
    const me = this.element.error;
    this.lastError = `${why}${me ? `: ${me.code} ${me.message}` : ''}`;
    this.player._log('relay player', this.stream, why);
    this.waitingKey = true;
    this._open();
    this._askKey();
  }

  _askKey() {
    const now = Date.now();
    if (now - this.lastAsk < KEY_ASK_MIN_MS) return;
    this.lastAsk = now;
    this.player.askKey(this.stream);
  }

  /**
   * @param {number} seq
   * @param {boolean} key
   * @param {number} ts
   * @param {Uint8Array} data
   */
  push(seq, key, ts, data) {
    if (key) {
      if (data[0] === 0x1a && data[1] === 0x45 && data[2] === 0xdf && data[3] === 0xa3) this.ebml += 1;
      this.waitingKey = false;
      this.keys += 1;
      this.queue = [];
      this.reset = true; // a new recording: reset the parser before its init segment
    } else if (this.waitingKey) {
      this.dropped += 1;
      this._askKey();
      return;
    } else if (seq !== this.lastSeq + 1) {
      this.gaps += 1;
      this.waitingKey = true;
      this.queue = [];
      this._askKey();
      return;
    }
    this.lastSeq = seq;
    this.lastTs = ts;
    this.lastArrival = Date.now();
    this.latencies.push(this.lastArrival - ts);
    if (this.latencies.length > 300) this.latencies.shift();
    this.queue.push(data);
    if (this.queue.length > 50) { // the decoder is far behind: start over from a new key
      this.queue = [];
      this.waitingKey = true;
      this._askKey();
      return;
    }
    this._pump();
  }

  _pump() {
    const sb = this.sb;
    const ms = this.ms;
    if (!sb || !ms || ms.readyState !== 'open' || sb.updating) return;
    this._chase();
    if (this.reset) {
      this.reset = false;
      try {
        sb.abort();
        const b = sb.buffered;
        if (b.length) sb.timestampOffset = b.end(b.length - 1);
      } catch (e) {
        this._fail(String(e));
        return;
      }
    }
    const next = this.queue.shift();
    if (next) {
      try {
        sb.appendBuffer(/** @type {BufferSource} */ (next));
        this.appended += 1;
      } catch (e) {
        if (/** @type {Error} */ (e).name === 'QuotaExceededError') this._trim(true);
        else this._fail(String(e));
      }
      return;
    }
    this._trim(false);
  }

  /** Keeps playback near the live edge. */
  _chase() {
    const el = this.element;
    const b = el.buffered;
    if (!b.length) return;
    const end = b.end(b.length - 1);
    const start = b.start(b.length - 1);
    if (el.currentTime < start || end - el.currentTime > MAX_LAG_S[/** @type {'a'|'v'} */ (this.stream)]) {
      el.currentTime = Math.max(start, end - TARGET_LAG_S);
      this.jumps += 1;
    }
    if (el.paused) el.play().catch(() => {});
  }

  /**
   * Drops what was played long ago. At most once a second: a remove ends in `updateend`, which
   * pumps again, and a remove that frees nothing (MSE keeps frames up to the next key frame; a
   * browser may round currentTime, as resistFingerprinting does) would otherwise loop at once,
   * remove after remove (it filled 20 GB in Firefox in half a minute).
   * @param {boolean} hard
   */
  _trim(hard) {
    const sb = this.sb;
    if (!sb || sb.updating) return;
    const now = Date.now();
    if (!hard && now - this.lastTrim < 1000) return;
    this.lastTrim = now;
    const b = sb.buffered;
    if (!b.length) return;
    const keepFrom = this.element.currentTime - (hard ? 1 : 5);
    if (b.start(0) < keepFrom - (hard ? 0 : 5)) {
      try { sb.remove(0, keepFrom); } catch { /* next time */ }
    }
  }

  get stats() {
    const el = this.element;
    const b = el.buffered;
    return {
      appended: this.appended, dropped: this.dropped, gaps: this.gaps, jumps: this.jumps,
      errors: this.errors, keys: this.keys, currentTime: el.currentTime,
      bufferedEnd: b.length ? b.end(b.length - 1) : 0, paused: el.paused,
      readyState: el.readyState, lastTs: this.lastTs, lastArrival: this.lastArrival,
      ebml: this.ebml, lastError: this.lastError, latencies: this.latencies.slice(-50),
    };
  }
}

export class RelayPlayer {
  /**
   * @param {{ video: HTMLVideoElement, audio: HTMLAudioElement,
   *   askKey: (stream: string) => void, log?: (...a: any[]) => void }} o
   */
  constructor(o) {
    this.askKey = o.askKey;
    this._log = o.log || (() => {});
    this.video = o.video;
    this.audio = o.audio;
    this.video.srcObject = null;
    this.audio.srcObject = null;
    /** @type {Record<string, Track>} */
    this.tracks = { a: new Track(this, 'a', o.audio), v: new Track(this, 'v', o.video) };
  }

  /**
   * @param {string} stream
   * @param {number} seq
   * @param {boolean} key
   * @param {number} ts
   * @param {Uint8Array} data
   */
  push(stream, seq, key, ts, data) {
    this.tracks[stream]?.push(seq, key, ts, data);
  }

  close() {
    for (const t of Object.values(this.tracks)) t.close();
    this.video.removeAttribute('src');
    this.audio.removeAttribute('src');
  }

  get stats() {
    return { a: this.tracks.a.stats, v: this.tracks.v.stats };
  }
}
