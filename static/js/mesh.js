// @ts-check
/**
 * The full mesh: one RTCPeerConnection per peer. Uses WebRTC objects but never the DOM.
 *
 * Who offers: for each pair the peer with the smaller id is the *initiator*. It makes the link
 * with exactly two transceivers (audio, video) and offers; the other side makes its link when the
 * first offer arrives and reuses those transceivers. So a link always has one audio and one video
 * m-line, and camera on/off and screen share are `replaceTrack` with no renegotiation.
 * Each link carries a random session id (`sid`) chosen by the initiator; a signal with a new sid
 * makes the other side drop its old link and start fresh (after a reload or lost offer).
 * Inside a session, the perfect-negotiation pattern (polite = non-initiator) handles ICE
 * restarts and any renegotiation from either side.
 * A non-initiator that (re)joins sends `{hello: true}` so the initiator (re)builds a dead link.
 *
 * Events: `track` {peer, stream}; `link-state` {peer, state}; `budget` (see planBudget);
 * `link-closed` {peer}; `no-candidates` {peer} (ICE gathered nothing, and never did on this
 * page: this browser cannot make calls here); `relay-unreachable` {peer} (gathered nothing
 * this time, though it did before: the TURN server is away for now; retried).
 */

/** Audio's share of each link's budget, kbit/s. */
export const AUDIO_KBPS = 40;
/** how long a link waits before it tries again when the TURN server could not be reached */
export const RELAY_RETRY_MS = 3000;

/**
 * How to spend the upload budget across links.
 * @param {{uploadKbps: number, minVideoKbps: number, links: number, trackHeight?: number,
 *          screen?: boolean}} o
 * @returns {{links: number, perLinkKbps: number, videoKbps: number, videoPaused: boolean,
 *            scaleResolutionDownBy: number, maxFramerate: number}}
 */
export function planBudget(o) {
  const links = Math.max(0, o.links);
  const perLinkKbps = Math.floor(o.uploadKbps / Math.max(1, links));
  const videoKbps = Math.max(0, perLinkKbps - AUDIO_KBPS);
  // with no link there is nothing to pause
  const videoPaused = links > 0 && videoKbps < o.minVideoKbps;
  const height = o.trackHeight || 720;
  // the height that bitrate carries well (VP8 rule of thumb)
  const target = videoKbps >= 1500 ? 720 : videoKbps >= 700 ? 540 : videoKbps >= 350 ? 360
    : videoKbps >= 200 ? 270 : 180;
  const scaleResolutionDownBy = o.screen ? 1 : Math.max(1, Math.round((height / target) * 4) / 4);
  const maxFramerate = o.screen ? (videoKbps >= 600 ? 15 : 5) : (videoKbps >= 300 ? 30 : 15);
  return { links, perLinkKbps, videoKbps, videoPaused, scaleResolutionDownBy, maxFramerate };
}

/** @returns {string} */
function randomId() {
  const b = new Uint8Array(9);
  globalThis.crypto.getRandomValues(b);
  return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}

/**
 * @typedef {{ signal(to: string, body: any): Promise<void> | void }} SignalSink
 * @typedef {{ iceServers: RTCIceServer[], iceTransportPolicy: RTCIceTransportPolicy }} IceConfig
 */

export class Link {
  /**
   * @param {Mesh} mesh
   * @param {string} peer
   * @param {boolean} initiator
   * @param {string} sid
   */
  constructor(mesh, peer, initiator, sid) {
    this.mesh = mesh;
    this.peer = peer;
    this.initiator = initiator;
    this.polite = !initiator;
    this.sid = sid;
    this.created = Date.now();
    this.makingOffer = false;
    this.ignoreOffer = false;
    this.closed = false;
    this.restarts = 0;
    /** @type {RTCIceCandidateInit[]} */
    this.pending = [];
    this.stream = new MediaStream();
    /** @type {RTCRtpTransceiver | null} */ this.audioTx = null;
    /** @type {RTCRtpTransceiver | null} */ this.videoTx = null;
    /** @type {ReturnType<typeof setTimeout> | null} */ this.disconnectTimer = null;
    /** @type {ReturnType<typeof setTimeout> | null} */ this.retryTimer = null;
    /** last stats sample, for rates */
    /** @type {{t: number, lost: number, recv: number, frames: number} | null} */
    this.lastSample = null;
    const pc = new RTCPeerConnection({
      iceServers: mesh.ice.iceServers,
      iceTransportPolicy: mesh.ice.iceTransportPolicy,
      bundlePolicy: 'max-bundle',
      rtcpMuxPolicy: 'require',
    });
    this.pc = pc;
    if (initiator) {
      this.audioTx = pc.addTransceiver(mesh.local.audio || 'audio', { direction: 'sendrecv' });
      this.videoTx = pc.addTransceiver(mesh.local.video || 'video', { direction: 'sendrecv' });
    }
    pc.onnegotiationneeded = () => { this._negotiate(); };
    this.gathered = 0;
    pc.onicecandidate = ({ candidate }) => {
      if (!candidate) return;
      if (candidate.candidate) {
        this.gathered += 1;
        mesh.everGathered = true;
      }
      this.send({ candidate: candidate.toJSON() });
    };
    pc.onicegatheringstatechange = () => {
      // nothing at all to offer: the relay is unreachable (or, in Firefox behind a proxy,
      // proxy-only mode found no default address): say so instead of waiting forever
      if (pc.iceGatheringState === 'complete' && this.gathered === 0 && !this.closed) {
        this._nothingGathered();
      }
    };
    pc.ontrack = ({ track }) => {
      for (const t of this.stream.getTracks()) {
        if (t.kind === track.kind && t !== track) this.stream.removeTrack(t);
      }
      if (!this.stream.getTracks().includes(track)) this.stream.addTrack(track);
      mesh._fire('track', { peer, stream: this.stream, track });
    };
    pc.onconnectionstatechange = () => this._stateChanged();
    pc.oniceconnectionstatechange = () => this._iceStateChanged();
    pc.onsignalingstatechange = () => {
      if (pc.signalingState === 'stable') mesh.applyBudget().catch(() => {});
    };
  }

  /** @param {any} body */
  send(body) {
    if (this.closed) return;
    Promise.resolve(this.mesh.sink.signal(this.peer, { sid: this.sid, ...body })).catch(() => {});
  }

  async _negotiate() {
    if (this.closed) return;
    try {
      this.makingOffer = true;
      await this.pc.setLocalDescription();
      this.send({ description: this.pc.localDescription?.toJSON() });
    } catch (e) {
      this.mesh._log('negotiation failed', this.peer, e);
    } finally {
      this.makingOffer = false;
    }
  }

  /** Perfect negotiation, receiving side. @param {RTCSessionDescriptionInit} description */
  async onDescription(description) {
    const pc = this.pc;
    const offerCollision = description.type === 'offer'
      && (this.makingOffer || pc.signalingState !== 'stable');
    this.ignoreOffer = !this.polite && offerCollision;
    if (this.ignoreOffer) return;
    await pc.setRemoteDescription(description);
    if (description.type === 'offer') {
      this._adoptTransceivers();
      await pc.setLocalDescription();
      this.send({ description: pc.localDescription?.toJSON() });
    }
    const queued = this.pending.splice(0);
    for (const c of queued) await this.onCandidate(c);
  }

  /** On the answering side, send our tracks on the transceivers the offer made. */
  _adoptTransceivers() {
    for (const tx of this.pc.getTransceivers()) {
      const kind = tx.receiver.track.kind;
      if (kind === 'audio' && !this.audioTx) this.audioTx = tx;
      else if (kind === 'video' && !this.videoTx) this.videoTx = tx;
      else continue;
      tx.direction = 'sendrecv';
      const track = kind === 'audio' ? this.mesh.local.audio : this.mesh.local.video;
      tx.sender.replaceTrack(track).catch(() => {});
    }
  }

  /** @param {RTCIceCandidateInit} candidate */
  async onCandidate(candidate) {
    if (!this.pc.remoteDescription) {
      this.pending.push(candidate);
      return;
    }
    try {
      await this.pc.addIceCandidate(candidate);
    } catch (e) {
      if (!this.ignoreOffer) this.mesh._log('bad candidate', this.peer, e);
    }
  }

  _stateChanged() {
    const state = this.pc.connectionState;
    if (state === 'connected') this.restarts = 0;
    this.mesh._fire('link-state', { peer: this.peer, state });
  }

  _iceStateChanged() {
    const state = this.pc.iceConnectionState;
    if (this.disconnectTimer) clearTimeout(this.disconnectTimer);
    this.disconnectTimer = null;
    if (state === 'failed' && this.gathered === 0) {
      // ICE failed without this side ever gathering a candidate: Firefox 153 in proxy-only
      // mode (Tor Browser's and Mullvad Browser's setting, behind a proxy) fails this way and
      // leaves its gathering state at 'new'.
      this._nothingGathered();
    } else if (state === 'failed') {
      this.restartIce();
    } else if (state === 'disconnected') {
      this.disconnectTimer = setTimeout(() => {
        if (this.pc.iceConnectionState === 'disconnected') this.restartIce();
      }, 4000);
    }
  }

  /**
   * This link gathered no candidate. If this browser never gathered one, it cannot make
   * WebRTC calls here (e.g. proxy-only mode behind Tor): `no-candidates`, and no retry can
   * help. If it did before, the TURN server is unreachable for now (e.g. the server is
   * restarting): `relay-unreachable`, and try again in a few seconds.
   */
  _nothingGathered() {
    if (!this.mesh.everGathered) {
      this.mesh._fire('no-candidates', { peer: this.peer });
      return;
    }
    if (this.retryTimer || this.closed) return;
    this.mesh._fire('relay-unreachable', { peer: this.peer });
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      this.restartIce();
    }, RELAY_RETRY_MS);
  }

  /** ICE restart; the initiator rebuilds the link after three restarts that did not help. */
  restartIce() {
    if (this.closed) return;
    this.restarts += 1;
    if (this.initiator && this.restarts > 3) {
      this.mesh._rebuild(this.peer);
      return;
    }
    this.pc.restartIce();
  }

  /** @returns {boolean} has an answer/offer from the other side and is not dead */
  healthy() {
    const s = this.pc.connectionState;
    return !this.closed && !!this.pc.remoteDescription && s !== 'failed' && s !== 'closed';
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    if (this.disconnectTimer) clearTimeout(this.disconnectTimer);
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.pc.onnegotiationneeded = null;
    this.pc.onicecandidate = null;
    this.pc.ontrack = null;
    this.pc.close();
    for (const t of this.stream.getTracks()) this.stream.removeTrack(t);
  }

  /**
   * A summary of the link for the quality indicator.
   * @returns {Promise<{rttMs: number | null, lossPct: number | null, fps: number | null,
   *   framesDecoded: number, relay: string | null, level: 'good'|'fair'|'poor'|'none'}>}
   */
  async quality() {
    const report = await this.pc.getStats();
    let rtt = null; let relay = null; let lost = 0; let recv = 0; let frames = 0;
    /** @type {Map<string, any>} */
    const byId = new Map();
    report.forEach((s) => byId.set(s.id, s));
    for (const s of byId.values()) {
      if (s.type === 'transport' && s.selectedCandidatePairId) {
        const pair = byId.get(s.selectedCandidatePairId);
        if (pair && typeof pair.currentRoundTripTime === 'number') rtt = pair.currentRoundTripTime;
        const local = pair && byId.get(pair.localCandidateId);
        if (local) relay = local.candidateType === 'relay' ? `relay/${local.relayProtocol}` : local.candidateType;
      }
      if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded' && rtt === null
        && typeof s.currentRoundTripTime === 'number') rtt = s.currentRoundTripTime;
      if (s.type === 'inbound-rtp') {
        lost += s.packetsLost || 0;
        recv += s.packetsReceived || 0;
        if (s.kind === 'video') frames += s.framesDecoded || 0;
      }
    }
    const now = Date.now();
    let lossPct = null; let fps = null;
    if (this.lastSample) {
      const dl = lost - this.lastSample.lost; const dr = recv - this.lastSample.recv;
      if (dl + dr > 0) lossPct = (100 * Math.max(0, dl)) / (dl + dr);
      const dt = (now - this.lastSample.t) / 1000;
      if (dt > 0) fps = Math.max(0, frames - this.lastSample.frames) / dt;
    }
    this.lastSample = { t: now, lost, recv, frames };
    const rttMs = rtt === null ? null : Math.round(rtt * 1000);
    /** @type {'good'|'fair'|'poor'|'none'} */
    let level = 'none';
    if (this.pc.connectionState === 'connected') {
      level = 'good';
      if ((rttMs ?? 0) > 400 || (lossPct ?? 0) > 3) level = 'fair';
      if ((rttMs ?? 0) > 1000 || (lossPct ?? 0) > 10) level = 'poor';
    }
    return { rttMs, lossPct, fps, framesDecoded: frames, relay, level };
  }
}

export class Mesh extends EventTarget {
  /**
   * @param {{ sink: SignalSink, ice?: IceConfig,
   *           media?: {uploadKbps: number, minVideoKbps: number},
   *           log?: (...args: any[]) => void }} opts
   */
  constructor(opts) {
    super();
    this.sink = opts.sink;
    /** @type {IceConfig} */
    this.ice = opts.ice ?? { iceServers: [], iceTransportPolicy: 'all' };
    this.media = opts.media ?? { uploadKbps: 2500, minVideoKbps: 150 };
    this.log = opts.log ?? (() => {});
    /** @type {string | null} */
    this.self = null;
    /** @type {Map<string, Link>} */
    this.links = new Map();
    /** @type {{ audio: MediaStreamTrack | null, video: MediaStreamTrack | null,
     *           screen: boolean }} */
    this.local = { audio: null, video: null, screen: false };
    /** @type {ReturnType<typeof planBudget> | null} */
    this.budget = null;
    /** peers that cannot do WebRTC (they said so): no link is made to them */
    /** @type {Set<string>} */
    this.excluded = new Set();
    /** whether any link of this page ever gathered an ICE candidate (see _nothingGathered) */
    this.everGathered = false;
  }

  /**
   * Marks a peer as without WebRTC (e.g. Tor Browser): close and never make a link to it.
   * @param {string} peer
   */
  exclude(peer) {
    this.excluded.add(peer);
    this.removePeer(peer);
  }

  /**
   * @param {string} type
   * @param {any} detail
   */
  _fire(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  /** @param {any[]} args */
  _log(...args) {
    this.log(...args);
  }

  /** @param {string} peer */
  isInitiator(peer) {
    return /** @type {string} */ (this.self) < peer;
  }

  /**
   * We are (again) in the room as `self`, with these other peers.
   * @param {string} self
   * @param {string[]} peers
   * @param {boolean} resumed same peer id as before (links may live on)
   */
  enter(self, peers, resumed) {
    if (!resumed || self !== this.self) this.closeAll();
    this.self = self;
    for (const id of [...this.links.keys()]) {
      if (!peers.includes(id)) this.removePeer(id);
    }
    for (const peer of peers) this._ensure(peer, true);
    this.applyBudget().catch(() => {});
  }

  /**
   * A peer joined or resumed.
   * @param {string} peer
   * @param {boolean} resumed
   */
  peerJoined(peer, resumed) {
    if (!this.self) return;
    const link = this.links.get(peer);
    if (!resumed && link) this.removePeer(peer);
    this._ensure(peer, resumed);
    this.applyBudget().catch(() => {});
  }

  /**
   * Make sure a link to `peer` exists or is being made.
   * @param {string} peer
   * @param {boolean} announce send hello when we are not the initiator
   */
  _ensure(peer, announce) {
    if (this.excluded.has(peer)) return;
    const link = this.links.get(peer);
    if (this.isInitiator(peer)) {
      if (link && (link.healthy() || Date.now() - link.created < 4000)) return;
      this._rebuild(peer);
    } else if (announce && !(link && link.healthy())) {
      Promise.resolve(this.sink.signal(peer, { hello: true })).catch(() => {});
    }
  }

  /** @param {string} peer */
  _rebuild(peer) {
    this.links.get(peer)?.close();
    const link = new Link(this, peer, this.isInitiator(peer), randomId());
    this.links.set(peer, link);
    this._fire('link-state', { peer, state: 'new' });
    return link;
  }

  /** @param {string} peer */
  removePeer(peer) {
    const link = this.links.get(peer);
    if (!link) return;
    link.close();
    this.links.delete(peer);
    this._fire('link-closed', { peer });
    this.applyBudget().catch(() => {});
  }

  closeAll() {
    for (const peer of [...this.links.keys()]) this.removePeer(peer);
  }

  /**
   * Decrypted signaling from `from`.
   * @param {string} from
   * @param {any} body
   */
  async onSignal(from, body) {
    if (!this.self || !body || typeof body !== 'object' || this.excluded.has(from)) return;
    if (body.hello) {
      if (this.isInitiator(from)) this._ensure(from, false);
      return;
    }
    if (typeof body.sid !== 'string') return;
    let link = this.links.get(from);
    if (this.isInitiator(from)) {
      if (!link || link.sid !== body.sid) return; // stale session
    } else if (!link || link.sid !== body.sid) {
      if (!body.description || body.description.type !== 'offer') return;
      link?.close();
      link = new Link(this, from, false, body.sid);
      this.links.set(from, link);
      this.applyBudget().catch(() => {});
    }
    try {
      if (body.description) await link.onDescription(body.description);
      else if (body.candidate) await link.onCandidate(body.candidate);
    } catch (e) {
      this._log('signal failed', from, e);
    }
  }

  /**
   * Sets (or clears) the tracks we send on every link.
   * @param {{ audio?: MediaStreamTrack | null, video?: MediaStreamTrack | null,
   *           screen?: boolean }} tracks
   */
  async setLocal(tracks) {
    if (tracks.audio !== undefined) this.local.audio = tracks.audio;
    if (tracks.video !== undefined) this.local.video = tracks.video;
    if (tracks.screen !== undefined) this.local.screen = tracks.screen;
    const jobs = [];
    for (const link of this.links.values()) {
      if (link.audioTx && tracks.audio !== undefined) {
        jobs.push(link.audioTx.sender.replaceTrack(this.local.audio));
      }
      if (link.videoTx && tracks.video !== undefined) {
        jobs.push(link.videoTx.sender.replaceTrack(this.local.video));
      }
    }
    await Promise.allSettled(jobs);
    await this.applyBudget();
  }

  /** @param {IceConfig} ice fresh TURN credentials */
  setIce(ice) {
    this.ice = { iceServers: ice.iceServers, iceTransportPolicy: ice.iceTransportPolicy };
    for (const link of this.links.values()) {
      try {
        link.pc.setConfiguration({ ...link.pc.getConfiguration(), ...this.ice });
      } catch (e) {
        this._log('setConfiguration failed', e);
      }
    }
  }

  /** Restarts ICE on links that are not connected (after our socket came back). */
  restartBroken() {
    for (const link of this.links.values()) {
      const s = link.pc.iceConnectionState;
      if (s === 'failed' || s === 'disconnected') link.restartIce();
    }
  }

  /** Splits the upload budget across links with RTCRtpSender.setParameters. */
  async applyBudget() {
    const video = this.local.video;
    const height = video ? (video.getSettings().height || 720) : 720;
    const plan = planBudget({
      uploadKbps: this.media.uploadKbps, minVideoKbps: this.media.minVideoKbps,
      links: this.links.size, trackHeight: height, screen: this.local.screen,
    });
    const changed = JSON.stringify(plan) !== JSON.stringify(this.budget);
    this.budget = plan;
    const jobs = [];
    for (const link of this.links.values()) {
      if (link.closed) continue;
      for (const [tx, kind] of /** @type {const} */ ([[link.audioTx, 'audio'], [link.videoTx, 'video']])) {
        if (!tx || tx.currentDirection === null || tx.currentDirection === 'stopped') continue;
        const params = tx.sender.getParameters();
        if (!params.encodings || params.encodings.length === 0) continue;
        const enc = params.encodings[0];
        if (kind === 'audio') {
          enc.maxBitrate = AUDIO_KBPS * 1000;
        } else {
          enc.active = !plan.videoPaused;
          enc.maxBitrate = Math.max(plan.videoKbps, 30) * 1000;
          enc.maxFramerate = plan.maxFramerate;
          if (video) enc.scaleResolutionDownBy = plan.scaleResolutionDownBy;
        }
        jobs.push(tx.sender.setParameters(params).catch((e) => this._log('setParameters', e)));
      }
    }
    await Promise.all(jobs);
    if (changed) this._fire('budget', plan);
  }
}
