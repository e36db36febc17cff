// @ts-check
/**
 * The page controller: landing → pre-join → call → ended. Renders state into the DOM; protocol
 * and crypto live in signaling.js / crypto.js, the mesh in mesh.js.
 */
import { io } from '/static/vendor/socket.io.esm.min.js';
import { assess, detect, explainMediaError, explainNoCandidates } from './capabilities.js';
import { generateRoomKey, KeyError, parseRoomKey } from './crypto.js';
import { Mesh } from './mesh.js';
import { drawQr } from './qr.js';
import { canFeedRelay, canPlayRelay, RelayPlayer, RelaySender } from './relay.js';
import { Signaling, SignalingError } from './signaling.js';
import { $, avatarFor, clearNotice, el, setNotice, showScreen } from './ui.js';

const ROOM_PATH = /^\/r\/([A-Za-z0-9_-]{22})\/?$/;
const MAX_NAME = 40;
const MAX_CHAT = 2000;

/**
 * @typedef {{ id: string, name: string, muted: boolean, camOff: boolean, sharing: boolean,
 *   tile: HTMLElement, video: HTMLVideoElement, audio: HTMLAudioElement,
 *   stream: MediaStream | null,
 *   analyser: AnalyserNode | null, source: MediaStreamAudioSourceNode | null,
 *   chatOnly?: boolean, relay?: RelayPlayer | null, relayReceiver?: boolean,
 *   noWebrtc?: boolean, path?: string }} PeerView
 */

/** CSP violations seen by this page (there should be none; tests read this). */
/** @type {string[]} */
const cspViolations = [];
document.addEventListener('securitypolicyviolation', (e) => {
  cspViolations.push(`${e.violatedDirective} ${e.blockedURI}`);
});

const state = {
  caps: detect(globalThis),
  verdict: /** @type {ReturnType<typeof assess>} */ (/** @type {unknown} */ (null)),
  /** @type {string | null} */ room: null,
  /** @type {string | null} */ keyText: null,
  /** @type {Uint8Array | null} */ keyBytes: null,
  /** @type {any} */ socket: null,
  /** @type {Signaling | null} */ sig: null,
  /** @type {Mesh | null} */ mesh: null,
  inCall: false,
  /** @type {{from: string, body: any}[]} */ queued: [],
  /** local media */
  /** @type {MediaStream | null} */ preview: null,
  /** @type {MediaStreamTrack | null} */ audio: null,
  /** @type {MediaStreamTrack | null} */ camera: null,
  /** @type {MediaStreamTrack | null} */ screen: null,
  micOn: true,
  camOn: true,
  devices: { camera: '', mic: '', speaker: '' },
  name: '',
  /** @type {Map<string, PeerView>} */ peers: new Map(),
  /** @type {PeerView | null} */ selfView: null,
  /** @type {AudioContext | null} */ audioCtx: null,
  /** @type {ReturnType<typeof setInterval> | null} */ statsTimer: null,
  /** @type {ReturnType<typeof setInterval> | null} */ speakTimer: null,
  chatOpen: false,
  unread: 0,
  /** chat messages kept for tests and for re-rendering */
  /** @type {{from: string, name: string, text: string, mine: boolean}[]} */ chat: [],
  csp: cspViolations,
  /** onion media relay: we receive through it (no WebRTC here) / we feed it */
  relayIn: false,
  /** the last `media/need` we sent (JSON), so it is sent only when it changes */
  relayWant: '',
  /** @type {RelaySender | null} */ relaySender: null,
  relayTimer: /** @type {ReturnType<typeof setInterval> | null} */ (null),
};

// For tests and for curious people: the page's live state (no secrets beyond what the URL has).
Object.defineProperty(globalThis, 'incognito', { value: state, configurable: true });

/* ------------------------------------------------------------------ boot */

function boot() {
  const playRelay = canPlayRelay(globalThis);
  state.verdict = assess({ ...state.caps, mediaSource: playRelay,
    mediaRecorder: state.caps.mediaRecorder && canFeedRelay(globalThis) });
  const m = ROOM_PATH.exec(location.pathname);
  if (state.verdict.level === 'none') {
    fatal(state.verdict.headline, state.verdict.lines);
    return;
  }
  if (m) {
    state.room = m[1];
    try {
      state.keyBytes = parseRoomKey(location.hash);
      state.keyText = location.hash.slice(1);
    } catch (e) {
      fatal('This link is missing its key', [e instanceof KeyError ? e.message : String(e),
        'The key is the part of the link after the # sign. Some apps cut it off: ask the '
        + 'person who invited you to send the whole link again.']);
      return;
    }
    // the key stays in the fragment for reloads, but never in a referrer or a server log
    showPrejoin();
  } else {
    showLanding();
  }
  window.addEventListener('hashchange', () => location.reload());
  window.addEventListener('pagehide', () => { state.sig?.close(); });
}

/**
 * @param {string} title
 * @param {string[]} lines
 */
function fatal(title, lines) {
  $('#fatal-title').textContent = title;
  const box = $('#fatal-text');
  box.replaceChildren(...lines.map((l) => el('p', {}, l)));
  showScreen('fatal');
}

/** @param {HTMLElement} box */
function showCaps(box) {
  const v = state.verdict;
  if (v.level === 'full' && v.lines.length === 0) {
    box.hidden = true;
    return;
  }
  box.replaceChildren(el('p', {}, el('strong', {}, v.headline)), ...v.lines.map((l) => el('p', {}, l)));
  box.hidden = false;
}

/* ------------------------------------------------------------------ socket */

function makeSignaling() {
  if (state.sig) return state.sig;
  state.socket = io({
    path: '/socket.io/',
    // WebSocket first (one connection, lowest latency, and the only transport that reaches
    // the same worker when the server runs several); long-polling if a proxy refuses it
    transports: ['websocket', 'polling'],
    tryAllTransports: true,
    autoConnect: false,
    reconnectionDelay: 300,
    reconnectionDelayMax: 3000,
    timeout: 15000,
  });
  const sig = new Signaling({ socket: state.socket, keyBytes: /** @type {Uint8Array} */ (state.keyBytes) });
  state.sig = sig;
  sig.addEventListener('status', (e) => onStatus(/** @type {CustomEvent} */ (e).detail));
  sig.addEventListener('room', (e) => onRoom(/** @type {CustomEvent} */ (e).detail));
  sig.addEventListener('peer-joined', (e) => onPeerJoined(/** @type {CustomEvent} */ (e).detail));
  sig.addEventListener('peer-left', (e) => onPeerLeft(/** @type {CustomEvent} */ (e).detail));
  sig.addEventListener('signal', (e) => {
    const d = /** @type {CustomEvent} */ (e).detail;
    if (state.inCall && state.mesh) state.mesh.onSignal(d.from, d.body);
    else state.queued.push(d);
  });
  sig.addEventListener('message', (e) => onMessage(/** @type {CustomEvent} */ (e).detail));
  sig.addEventListener('screen', (e) => {
    const d = /** @type {CustomEvent} */ (e).detail;
    const p = state.peers.get(d.from);
    if (p) { p.sharing = !!d.sharing; renderPeer(p); }
  });
  sig.addEventListener('undecryptable', (e) => onUndecryptable(/** @type {CustomEvent} */ (e).detail));
  sig.addEventListener('host', () => renderHost());
  sig.addEventListener('locked', () => {
    if (sig.locked) clearNotice('lock-lost');  // the host came back and locked it again
    renderHost();
  });
  sig.addEventListener('lock-lost', (e) => {
    const d = /** @type {CustomEvent} */ (e).detail;
    setNotice('lock-lost', 'warn', d.isHost
      ? 'The server restarted and the room came back unlocked: lock it again if you need to.'
      : 'The server restarted and the room came back unlocked.', 15000);
  });
  sig.addEventListener('removed', () => endCall('removed'));
  sig.addEventListener('rejoin-failed', (e) => {
    const d = /** @type {CustomEvent} */ (e).detail;
    endCall('failed', d.message);
  });
  sig.addEventListener('ice', (e) => state.mesh?.setIce(/** @type {CustomEvent} */ (e).detail));
  sig.addEventListener('relay-receivers', (e) => onRelayReceivers(/** @type {CustomEvent} */ (e).detail));
  sig.addEventListener('media', (e) => onRelayMedia(/** @type {CustomEvent} */ (e).detail));
  sig.addEventListener('keyframe', (e) => {
    const d = /** @type {CustomEvent} */ (e).detail;
    // from null: the server dropped our chunks for a slow receiver, a sign to send less video
    if (d.from === null && d.stream === 'v' && state.relaySender?.trouble()) return;
    state.relaySender?.restart(d.stream);
  });
  sig.addEventListener('server-error', (e) => {
    const d = /** @type {CustomEvent} */ (e).detail;
    if (d.code === 'rate_limited') setNotice('rate', 'info', 'Slow down: the server dropped some messages.', 5000);
  });
  return sig;
}

/* ------------------------------------------------------------------ landing */

function showLanding() {
  showScreen('landing');
  showCaps($('#landing-caps'));
  const btn = /** @type {HTMLButtonElement} */ ($('#create-room'));
  btn.onclick = async () => {
    btn.disabled = true;
    $('#landing-error').hidden = true;
    try {
      state.keyText = generateRoomKey();
      state.keyBytes = parseRoomKey(state.keyText);
      const sig = makeSignaling();
      state.room = await sig.create();
      history.pushState(null, '', `/r/${state.room}#${state.keyText}`);
      showPrejoin();
    } catch (e) {
      const err = $('#landing-error');
      err.textContent = e instanceof SignalingError ? e.message : `Could not start a room: ${e}`;
      err.hidden = false;
      state.sig?.socket.disconnect();
      state.sig = null;
    } finally {
      btn.disabled = false;
    }
  };
}

/* ------------------------------------------------------------------ pre-join */

function showPrejoin() {
  showScreen('prejoin');
  showCaps($('#prejoin-caps'));
  const nameInput = /** @type {HTMLInputElement} */ ($('#name'));
  nameInput.value = sessionStorage.getItem('incognito-name') || state.name || '';
  $('#room-summary').textContent = state.sig && state.sig.active
    ? 'Your new room is ready. Join, then invite people with its link.'
    : 'You are about to join a private, end-to-end encrypted room.';
  const joinBtn = /** @type {HTMLButtonElement} */ ($('#join'));
  joinBtn.textContent = state.verdict.canCall || state.verdict.canWatch ? 'Join' : 'Join the chat';
  joinBtn.onclick = () => join();
  nameInput.onkeydown = (e) => { if (e.key === 'Enter') join(); };
  const preMic = $('#pre-mic');
  const preCam = $('#pre-cam');
  preMic.onclick = () => { state.micOn = !state.micOn; applyLocalToggles(); };
  preCam.onclick = async () => {
    state.camOn = !state.camOn;
    if (state.camOn && !state.camera) await startCamera();
    else if (!state.camOn) stopCamera();
    applyLocalToggles();
  };
  for (const [id, key] of /** @type {const} */ ([['#sel-camera', 'camera'], ['#sel-mic', 'mic'], ['#sel-speaker', 'speaker']])) {
    const sel = /** @type {HTMLSelectElement} */ ($(id));
    sel.onchange = async () => {
      state.devices[key] = sel.value;
      if (key === 'camera') { stopCamera(); if (state.camOn) await startCamera(); }
      if (key === 'mic') await startMic();
      if (key === 'speaker') applySpeaker();
      applyLocalToggles();
    };
  }
  $('#speaker-field').hidden = !state.caps.setSinkId;
  if (state.verdict.canSend) {
    startMedia().then(() => { applyLocalToggles(); });
  } else {
    state.micOn = false;
    state.camOn = false;
    $('.preview-controls').hidden = true;
    for (const id of ['#sel-camera', '#sel-mic', '#sel-speaker']) {
      /** @type {HTMLElement} */ ($(id).closest('.field')).hidden = true;
    }
    applyLocalToggles();
  }
  setTimeout(() => nameInput.focus(), 50);
}

/** Starts microphone and camera for the preview (each on its own, so one failing keeps the other). */
async function startMedia() {
  const note = $('#preview-note');
  note.textContent = '';
  const errs = [];
  try { await startMic(); } catch (e) { errs.push(e); state.micOn = false; }
  if (state.camOn) {
    try { await startCamera(); } catch (e) { errs.push(e); state.camOn = false; }
  }
  if (errs.length) note.textContent = explainMediaError(errs[0]);
  await fillDevices();
  startPreviewMeter();
}

async function startMic() {
  const constraints = {
    audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true,
      ...(state.devices.mic ? { deviceId: { exact: state.devices.mic } } : {}) },
  };
  const stream = await navigator.mediaDevices.getUserMedia(constraints);
  const track = stream.getAudioTracks()[0];
  state.audio?.stop();
  state.audio = track;
  track.enabled = state.micOn;
  if (state.mesh) await state.mesh.setLocal({ audio: track });
  relayTracks();
  if (state.selfView) attachSelf();
}

async function startCamera() {
  const stream = await navigator.mediaDevices.getUserMedia({
    video: {
      width: { ideal: 1280 }, height: { ideal: 720 }, frameRate: { ideal: 30 },
      ...(state.devices.camera ? { deviceId: { exact: state.devices.camera } } : {}),
    },
  });
  const track = stream.getVideoTracks()[0];
  state.camera?.stop();
  state.camera = track;
  if (state.mesh && !state.screen) await state.mesh.setLocal({ video: track });
  relayTracks();
  attachPreview();
  if (state.selfView) attachSelf();
}

function stopCamera() {
  state.camera?.stop();
  state.camera = null;
  if (state.mesh && !state.screen) state.mesh.setLocal({ video: null });
  relayTracks();
  attachPreview();
  if (state.selfView) attachSelf();
}

function attachPreview() {
  const v = /** @type {HTMLVideoElement} */ ($('#preview-video'));
  const tracks = state.camera ? [state.camera] : [];
  v.srcObject = tracks.length ? new MediaStream(tracks) : null;
}

async function fillDevices() {
  if (!state.caps.enumerateDevices) return;
  const list = await navigator.mediaDevices.enumerateDevices();
  /**
   * @param {string} sel
   * @param {MediaDeviceKind} kind
   * @param {string} current
   * @param {string} fallback
   */
  const fill = (sel, kind, current, fallback) => {
    const s = /** @type {HTMLSelectElement} */ ($(sel));
    const devs = list.filter((d) => d.kind === kind);
    s.replaceChildren(...(devs.length ? devs : [null]).map((d, i) => {
      const o = /** @type {HTMLOptionElement} */ (el('option', {}, d ? (d.label || `${fallback} ${i + 1}`) : `No ${fallback.toLowerCase()} found`));
      o.value = d ? d.deviceId : '';
      return o;
    }));
    if (current) s.value = current;
    s.disabled = devs.length === 0;
  };
  const camId = state.camera?.getSettings().deviceId || state.devices.camera;
  const micId = state.audio?.getSettings().deviceId || state.devices.mic;
  fill('#sel-camera', 'videoinput', camId, 'Camera');
  fill('#sel-mic', 'audioinput', micId, 'Microphone');
  fill('#sel-speaker', 'audiooutput', state.devices.speaker, 'Speaker');
}

function applySpeaker() {
  const id = state.devices.speaker;
  if (!id || !state.caps.setSinkId) return;
  for (const p of state.peers.values()) {
    /** @type {any} */ (p.audio).setSinkId(id).catch(() => {});
  }
}

function applyLocalToggles() {
  if (state.audio) state.audio.enabled = state.micOn;
  for (const [id, on] of /** @type {const} */ ([['#pre-mic', state.micOn], ['#pre-cam', state.camOn], ['#btn-mic', state.micOn], ['#btn-cam', state.camOn || !!state.screen]])) {
    const b = $(id);
    b.classList.toggle('on', on);
    b.setAttribute('aria-pressed', String(on));
  }
  $('#btn-mic').title = state.micOn ? 'Mute (M)' : 'Unmute (M)';
  $('#btn-cam').title = state.camOn ? 'Turn camera off (V)' : 'Turn camera on (V)';
  const av = $('#preview-avatar');
  av.hidden = !!state.camera;
  setAvatar(av, state.name || /** @type {HTMLInputElement} */ ($('#name')).value || 'You');
  if (state.selfView) {
    state.selfView.muted = !state.micOn;
    state.selfView.camOff = !state.camera && !state.screen;
    state.selfView.sharing = !!state.screen;
    renderPeer(state.selfView);
  }
}

/**
 * @param {HTMLElement} avatarBox
 * @param {string} name
 */
function setAvatar(avatarBox, name) {
  const span = /** @type {HTMLElement} */ (avatarBox.querySelector('span'));
  const a = avatarFor(name);
  span.textContent = a.initials;
  span.dataset.hue = String(a.hue);
}

/** Audio level meter in the preview. */
function startPreviewMeter() {
  const bar = $('#pre-meter');
  /** @type {AnalyserNode | null} */
  let an = null;
  const tick = () => {
    if (!$('#prejoin').hidden) {
      if (!an && state.audio) an = analyserFor(new MediaStream([state.audio]));
      const lvl = an && state.micOn ? levelOf(an) : 0;
      bar.dataset.level = String(Math.min(5, Math.round(lvl * 40)));
      requestAnimationFrame(tick);
    }
  };
  requestAnimationFrame(tick);
}

/* ------------------------------------------------------------------ joining */

async function join() {
  const btn = /** @type {HTMLButtonElement} */ ($('#join'));
  const err = $('#prejoin-error');
  err.hidden = true;
  const name = /** @type {HTMLInputElement} */ ($('#name')).value.trim().slice(0, MAX_NAME);
  state.name = name;
  if (name) sessionStorage.setItem('incognito-name', name);
  btn.disabled = true;
  btn.textContent = 'Joining…';
  try {
    // The speaking indicator's AudioContext, made in this click so it may start. Only where
    // there is WebRTC audio to measure: a relay-only browser (Tor Browser) has none, and an
    // AudioContext under resistFingerprinting was measured growing Firefox 153 by ~1.5 GB/s
    // (headless, no sound server) until the OOM killer stepped in.
    if (state.verdict.canCall) ensureAudioContext();
    const sig = makeSignaling();
    const profile = { name };
    if (sig.active && sig.room === state.room) sig.setProfile(profile);
    else await sig.join(/** @type {string} */ (state.room), profile);
    enterCall();
  } catch (e) {
    err.textContent = e instanceof SignalingError ? e.message : `Could not join: ${e}`;
    err.hidden = false;
    btn.disabled = false;
    btn.textContent = state.verdict.canCall || state.verdict.canWatch ? 'Join' : 'Join the chat';
    if (state.sig && !state.sig.active) { state.sig.socket.disconnect(); state.sig = null; }
  }
}

function ensureAudioContext() {
  if (state.audioCtx || typeof AudioContext !== 'function') return;
  try { state.audioCtx = new AudioContext(); } catch { state.audioCtx = null; }
}

function enterCall() {
  const sig = /** @type {Signaling} */ (state.sig);
  state.inCall = true;
  showScreen('call');
  if (state.verdict.canCall) {
    const mesh = new Mesh({
      sink: sig, ice: sig.ice, media: sig.media,
      log: (...a) => console.debug('[mesh]', ...a),
    });
    state.mesh = mesh;
    mesh.local.audio = state.audio;
    mesh.local.video = state.camera;
    mesh.addEventListener('track', (e) => onTrack(/** @type {CustomEvent} */ (e).detail));
    mesh.addEventListener('link-state', (e) => {
      const d = /** @type {CustomEvent} */ (e).detail;
      const p = state.peers.get(d.peer);
      if (p) { p.tile.dataset.link = d.state; }
    });
    mesh.addEventListener('budget', (e) => onBudget(/** @type {CustomEvent} */ (e).detail));
    mesh.addEventListener('no-candidates', () => {
      const relay = state.verdict.canWatch && canPlayRelay(globalThis);
      setNotice('ice', relay ? 'warn' : 'bad', explainNoCandidates({
        firefox: /firefox/i.test(navigator.userAgent),
        relayOnly: sig.ice.iceTransportPolicy === 'relay',
        relay,
      }));
      if (relay) switchToRelay();
    });
    mesh.addEventListener('relay-unreachable', () => {
      setNotice('ice', 'warn', 'The TURN relay cannot be reached right now (is the server '
        + 'restarting?). Trying again…', 8000);
    });
  }
  if (state.verdict.canSend && canFeedRelay(globalThis)) {
    state.relaySender = new RelaySender({
      sink: (stream, seq, key, ts, data) => sig.sendMedia(stream, seq, key, ts, data),
      congested: () => socketCongested(),
      videoBps: Math.min(600_000, sig.media.uploadKbps * 1000 / 2),
      log: (...a) => console.debug('[relay]', ...a),
    });
    relayTracks();
  }
  if (!state.verdict.canCall && state.verdict.canWatch) state.relayIn = true;
  updateRelayNeed();
  onRelayReceivers({ peers: [...sig.relayReceivers], added: [...sig.relayReceivers] });
  state.relayTimer = setInterval(renderPaths, 1000);
  state.selfView = makeTile('self', state.name || 'You', true);
  renderCount();
  attachSelf();
  for (const [id, info] of sig.peers) addPeer(id, info.profile);
  state.mesh?.enter(/** @type {string} */ (sig.self), [...sig.peers.keys()], false);
  for (const d of state.queued.splice(0)) state.mesh?.onSignal(d.from, d.body);
  announceState();
  renderHost();
  applyLocalToggles();
  wireCallControls();
  state.statsTimer = setInterval(updateQuality, 2000);
  state.speakTimer = setInterval(updateSpeaking, 150);
  if (!state.verdict.canCall) {
    setNotice('caps', 'info', `${state.verdict.headline}. ${state.verdict.lines[0] || ''}`);
    if (!state.verdict.canWatch) openChat(true);
  }
  if (sig.peers.size === 0) {
    setNotice('alone', 'info', 'You are the only one here. Invite people with the link.', 0,
      { label: 'Invite', onClick: openInvite });
  }
}

/** Our name and toggles, encrypted, to everyone (also after they join or we rejoin). */
function announceState() {
  const sig = state.sig;
  if (!sig || !sig.active) return;
  sig.broadcast({ type: 'state', name: state.name, muted: !state.micOn,
    camOff: (!state.camera && !state.screen) || !!state.mesh?.budget?.videoPaused,
    // the camera itself (the budget above pauses WebRTC video only; the relay still sends it)
    camOn: !!(state.camera || state.screen),
    sharing: !!state.screen,
    webrtc: state.verdict.canCall && !state.relayIn, relay: state.relayIn,
    sends: !!state.relaySender }).catch(() => {});
}

/* ------------------------------------------------------------------ signaling events */

/** @param {{state: string}} d */
function onStatus(d) {
  const dot = $('#conn-status');
  dot.dataset.state = d.state;
  dot.title = { connected: 'Connected to the room', connecting: 'Connecting…', reconnecting: 'Connection lost: reconnecting…', closed: 'Disconnected' }[d.state] || d.state;
  if (!state.inCall) return;
  if (d.state === 'reconnecting') {
    setNotice('conn', 'warn', 'Connection to the room lost. Reconnecting… (calls already running go on)');
  }
}

/** @param {{self: string, peers: {peer: string, profile: any}[], resumed: boolean}} d */
function onRoom(d) {
  if (!state.inCall) return;
  clearNotice('conn');
  const keep = new Set(d.peers.map((p) => p.peer));
  for (const id of [...state.peers.keys()]) if (!keep.has(id)) removePeer(id);
  for (const p of d.peers) if (!state.peers.has(p.peer)) addPeer(p.peer, p.profile);
  state.mesh?.enter(d.self, d.peers.map((p) => p.peer), d.resumed);
  if (d.resumed) state.mesh?.restartBroken();
  announceState();
  renderHost();
  setNotice('conn', 'info', 'Reconnected.', 3000);
}

/** @param {{peer: string, profile: any, resumed: boolean}} d */
function onPeerJoined(d) {
  if (!state.inCall) return;
  clearNotice('alone');
  if (!state.peers.has(d.peer)) {
    addPeer(d.peer, d.profile);
    systemChat(`${displayName(d.profile?.name)} joined`);
  }
  state.mesh?.peerJoined(d.peer, d.resumed);
  announceState();
  renderCount();
}

/** @param {{peer: string, reason: string}} d */
function onPeerLeft(d) {
  if (!state.inCall) return;
  const p = state.peers.get(d.peer);
  if (p) systemChat(`${p.name} ${d.reason === 'removed' ? 'was removed' : 'left'}`);
  removePeer(d.peer);
}

/** @param {{from: string, body: any}} d */
function onMessage(d) {
  const b = d.body;
  if (!b || typeof b !== 'object') return;
  const p = state.peers.get(d.from);
  if (b.type === 'state') {
    if (!p) return;
    p.name = displayName(b.name);
    p.muted = !!b.muted;
    // through the relay we get their video whatever their WebRTC budget says
    p.camOff = state.relayIn && typeof b.camOn === 'boolean' ? !b.camOn : !!b.camOff;
    p.sharing = !!b.sharing;
    if (b.webrtc === false) {
      // no WebRTC there: media goes through the onion relay if they can play it, else chat only
      p.chatOnly = !b.relay;
      p.relayReceiver = !!b.relay;
      if (!p.relay && !b.sends) { p.muted = true; p.camOff = true; }
      state.mesh?.exclude(d.from);
      if (!p.noWebrtc) {
        p.noWebrtc = true;
        updateRelayNeed();
      }
    }
    renderPeer(p);
  } else if (b.type === 'chat' && typeof b.text === 'string') {
    const text = b.text.slice(0, MAX_CHAT);
    const entry = { from: d.from, name: p ? p.name : 'Someone', text, mine: false };
    state.chat.push(entry);
    renderChat(entry);
    if (!state.chatOpen) {
      state.unread += 1;
      $('#chat-unread').hidden = false;
    }
  }
}

/** @param {{count: number, senders: number}} d */
function onUndecryptable(d) {
  const who = d.senders === 1 ? 'Someone in this room uses' : `${d.senders} people in this room use`;
  setNotice('wrongkey', 'bad',
    `Someone with a wrong key is in this room. ${who} a different room key than yours, so `
    + `you cannot read each other (${d.count} message${d.count === 1 ? '' : 's'} dropped). `
    + 'If that is you: ask for the full link again.');
  document.body.dataset.wrongKey = String(d.count);
}

/** @param {ReturnType<typeof import('./mesh.js').planBudget>} plan */
function onBudget(plan) {
  if (plan.videoPaused && state.peers.size > 0) {
    setNotice('budget', 'warn', `Video paused: with ${state.peers.size + 1} people your upload `
      + `budget (${plan.perLinkKbps} kbit/s for each) is too small for video. Sound goes on.`);
  } else {
    clearNotice('budget');
  }
  announceState();
}

/* ------------------------------------------------------------------ tiles */

/** @param {unknown} name */
function displayName(name) {
  const n = typeof name === 'string' ? name.trim().slice(0, MAX_NAME) : '';
  return n || 'Guest';
}

/**
 * @param {string} id
 * @param {string} name
 * @param {boolean} self
 * @returns {PeerView}
 */
function makeTile(id, name, self) {
  const tpl = /** @type {HTMLTemplateElement} */ ($('#tile-tpl'));
  const tile = /** @type {HTMLElement} */ (/** @type {DocumentFragment} */ (tpl.content.cloneNode(true)).firstElementChild);
  tile.dataset.peer = id;
  const video = /** @type {HTMLVideoElement} */ (tile.querySelector('video'));
  // sound plays from its own element, so it goes on when video pauses (audio-only)
  video.muted = true;
  const audio = /** @type {HTMLAudioElement} */ (document.createElement('audio'));
  audio.autoplay = true;
  if (!self) tile.append(audio);
  if (self) {
    tile.classList.add('self');
    video.muted = true;
    /** @type {HTMLElement} */ (tile.querySelector('.quality')).hidden = true;
  }
  const view = { id, name, muted: false, camOff: !self, sharing: false, tile, video, audio, stream: null, analyser: null, source: null };
  const remove = /** @type {HTMLButtonElement} */ (tile.querySelector('.remove'));
  remove.onclick = async () => {
    if (!confirm(`Remove ${view.name} from the room?`)) return;
    try { await state.sig?.remove(id); } catch (e) { setNotice('host', 'bad', String(/** @type {Error} */ (e).message), 5000); }
  };
  $('#grid').append(tile);
  renderPeer(view);
  return view;
}

/**
 * @param {string} id
 * @param {any} profile
 */
function addPeer(id, profile) {
  const unreadable = !profile && !!state.sig?.badSenders.has(id);
  const view = makeTile(id, unreadable ? 'Unreadable (other key)' : displayName(profile?.name), false);
  state.peers.set(id, view);
  renderCount();
  if (state.devices.speaker && state.caps.setSinkId) /** @type {any} */ (view.audio).setSinkId(state.devices.speaker).catch(() => {});
  renderHost();
  return view;
}

/** @param {string} id */
function removePeer(id) {
  const p = state.peers.get(id);
  state.mesh?.removePeer(id);
  if (!p) return;
  p.source?.disconnect();
  p.relay?.close();
  p.relay = null;
  p.video.srcObject = null;
  p.audio.srcObject = null;
  p.tile.remove();
  state.peers.delete(id);
  renderCount();
  if (p.noWebrtc) updateRelayNeed();
}

function attachSelf() {
  const v = state.selfView;
  if (!v) return;
  const track = state.screen || state.camera;
  v.video.srcObject = track ? new MediaStream([track]) : null;
  v.tile.classList.toggle('screen', !!state.screen);
  v.stream = state.audio ? new MediaStream([state.audio]) : null;
  v.analyser = null;
  applyLocalToggles();
}

/** @param {{peer: string, stream: MediaStream}} d */
function onTrack(d) {
  const p = state.peers.get(d.peer);
  if (!p) return;
  p.stream = d.stream;
  const v = d.stream.getVideoTracks();
  const a = d.stream.getAudioTracks();
  const vs = /** @type {MediaStream | null} */ (p.video.srcObject);
  if (v.length && (!vs || vs.getVideoTracks()[0] !== v[0])) p.video.srcObject = new MediaStream(v);
  const as = /** @type {MediaStream | null} */ (p.audio.srcObject);
  if (a.length && (!as || as.getAudioTracks()[0] !== a[0])) p.audio.srcObject = new MediaStream(a);
  p.video.play().catch(() => {});
  p.audio.play().catch(() => {
    setNotice('autoplay', 'info', 'Your browser paused the sound. Click anywhere to hear the others.', 0);
    document.addEventListener('click', () => {
      for (const q of state.peers.values()) q.audio.play().catch(() => {});
      clearNotice('autoplay');
    }, { once: true });
  });
  p.analyser = null;
  p.source?.disconnect();
  p.source = null;
}

/** @param {PeerView} p */
function renderPeer(p) {
  const t = p.tile;
  /** @type {HTMLElement} */ (t.querySelector('.name')).textContent = p.id === 'self' ? `${p.name} (you)`
    : p.chatOnly ? `${p.name} (chat only)` : p.name;
  /** @type {HTMLElement} */ (t.querySelector('.muted-icon')).toggleAttribute('hidden', !p.muted);
  /** @type {HTMLElement} */ (t.querySelector('.sharing')).hidden = !p.sharing;
  t.classList.toggle('sharing', p.sharing && p.id !== 'self');
  const av = /** @type {HTMLElement} */ (t.querySelector('.avatar'));
  // without WebRTC here, nobody's video can show: show everyone as a picture of initials
  const relayVideo = !!p.relay && p.relay.tracks.v.appended > 0;
  const noVideo = p.camOff || (!state.verdict.canCall && p.id !== 'self' && !relayVideo);
  av.hidden = !noVideo;
  /** @type {HTMLElement} */ (t.querySelector('.quality')).hidden = p.id === 'self' || !state.verdict.canCall || !!p.chatOnly || !!p.relayReceiver;
  setAvatar(av, p.name);
  t.dataset.muted = String(p.muted);
  t.dataset.camOff = String(p.camOff);
}

function renderCount() {
  const n = state.peers.size + (state.selfView ? 1 : 0);
  const grid = $('#grid');
  // watch-only (sends nothing): a small self-view in the corner, the grid for the others
  const mini = !!state.selfView && !state.verdict.canSend && state.peers.size > 0;
  state.selfView?.tile.classList.toggle('mini', mini);
  grid.dataset.count = String(Math.max(1, mini ? n - 1 : n));
  $('#people-count').textContent = `${n} ${n === 1 ? 'person' : 'people'}`;
}

function renderHost() {
  const sig = state.sig;
  if (!sig) return;
  const amHost = sig.host === sig.self;
  const lockBtn = $('#btn-lock');
  lockBtn.hidden = !amHost;
  lockBtn.setAttribute('aria-pressed', String(sig.locked));
  /** @type {HTMLElement} */ (lockBtn.querySelector('.label')).textContent = sig.locked ? 'Unlock' : 'Lock';
  lockBtn.title = sig.locked ? 'Unlock the room: new people can join again' : 'Lock the room: nobody new can join';
  $('#lock-badge').hidden = !sig.locked;
  for (const p of state.peers.values()) {
    /** @type {HTMLElement} */ (p.tile.querySelector('.remove')).hidden = !amHost;
    p.tile.classList.toggle('host', p.id === sig.host);
  }
}

async function updateQuality() {
  const mesh = state.mesh;
  if (!mesh) return;
  for (const [id, link] of mesh.links) {
    const p = state.peers.get(id);
    if (!p) continue;
    try {
      const q = await link.quality();
      const el2 = /** @type {HTMLElement} */ (p.tile.querySelector('.quality'));
      el2.dataset.level = q.level;
      const parts = [{ good: 'Good connection', fair: 'Fair connection', poor: 'Poor connection', none: 'Connecting…' }[q.level]];
      if (q.rttMs !== null) parts.push(`round trip ${q.rttMs} ms`);
      if (q.lossPct !== null) parts.push(`loss ${q.lossPct.toFixed(1)} %`);
      if (q.relay) parts.push(`via ${q.relay}`);
      if (q.relay) p.tile.dataset.route = q.relay;
      el2.title = parts.join(' · ');
    } catch { /* link closing */ }
  }
}

/* ------------------------------------------------------------------ speaking */

/**
 * @param {MediaStream} stream
 * @returns {AnalyserNode | null}
 */
function analyserFor(stream) {
  ensureAudioContext();
  const ctx = state.audioCtx;
  if (!ctx || stream.getAudioTracks().length === 0) return null;
  try {
    const src = ctx.createMediaStreamSource(stream);
    const an = ctx.createAnalyser();
    an.fftSize = 512;
    src.connect(an);
    return an;
  } catch {
    return null;
  }
}

/** @param {AnalyserNode} an RMS level, 0..1 */
function levelOf(an) {
  const buf = new Float32Array(an.fftSize);
  an.getFloatTimeDomainData(buf);
  let sum = 0;
  for (const x of buf) sum += x * x;
  return Math.sqrt(sum / buf.length);
}

function updateSpeaking() {
  if (state.audioCtx && state.audioCtx.state === 'suspended') state.audioCtx.resume().catch(() => {});
  const views = [...state.peers.values()];
  if (state.selfView) views.push(state.selfView);
  for (const p of views) {
    if (!p.stream) continue;
    if (!p.analyser) p.analyser = analyserFor(p.stream);
    const lvl = p.analyser && !p.muted ? levelOf(p.analyser) : 0;
    p.tile.classList.toggle('speaking', lvl > 0.02);
  }
}

/* ------------------------------------------------------------------ controls */

let controlsWired = false;
function wireCallControls() {
  if (controlsWired) return;
  controlsWired = true;
  $('#btn-mic').onclick = () => toggleMic();
  $('#btn-cam').onclick = () => toggleCam();
  $('#btn-screen').onclick = () => toggleScreen();
  $('#btn-chat').onclick = () => openChat(!state.chatOpen);
  $('#chat-close').onclick = () => openChat(false);
  $('#btn-invite').onclick = () => openInvite();
  $('#btn-lock').onclick = async () => {
    const sig = state.sig;
    if (!sig) return;
    try { await sig.lock(!sig.locked); } catch (e) { setNotice('host', 'bad', String(/** @type {Error} */ (e).message), 5000); }
  };
  $('#btn-leave').onclick = () => leave();
  /** @type {HTMLFormElement} */ ($('#chat-form')).onsubmit = (e) => { e.preventDefault(); sendChat(); };
  $('#copy-link').onclick = () => copyLink();
  if (!state.caps.getDisplayMedia || !state.verdict.canSend) $('#btn-screen').hidden = true;
  if (!state.verdict.canSend) { $('#btn-mic').hidden = true; $('#btn-cam').hidden = true; }
  document.addEventListener('keydown', (e) => {
    if (!state.inCall || e.target instanceof HTMLInputElement || e.ctrlKey || e.metaKey || e.altKey) return;
    if (e.key === 'm') toggleMic();
    if (e.key === 'v') toggleCam();
  });
}

function toggleMic() {
  if (!state.verdict.canSend) return;
  state.micOn = !state.micOn;
  if (!state.audio && state.micOn) startMic().catch((e) => setNotice('media', 'bad', explainMediaError(e), 6000));
  applyLocalToggles();
  announceState();
}

async function toggleCam() {
  if (!state.verdict.canSend) return;
  state.camOn = !state.camOn;
  try {
    if (state.camOn) await startCamera();
    else stopCamera();
  } catch (e) {
    state.camOn = false;
    setNotice('media', 'bad', explainMediaError(e), 6000);
  }
  applyLocalToggles();
  announceState();
}

async function toggleScreen() {
  const btn = $('#btn-screen');
  if (state.screen) {
    stopScreen();
    return;
  }
  try {
    const stream = await navigator.mediaDevices.getDisplayMedia({ video: { frameRate: { ideal: 15 } }, audio: false });
    const track = stream.getVideoTracks()[0];
    track.contentHint = 'detail';
    state.screen = track;
    track.onended = () => stopScreen();
    await state.mesh?.setLocal({ video: track, screen: true });
    relayTracks();
    btn.setAttribute('aria-pressed', 'true');
    attachSelf();
    state.sig?.shareScreen(true).catch(() => {});
    announceState();
  } catch (e) {
    if (/** @type {Error} */ (e).name !== 'NotAllowedError') setNotice('media', 'bad', 'Screen sharing could not start.', 5000);
  }
}

function stopScreen() {
  if (!state.screen) return;
  state.screen.onended = null;
  state.screen.stop();
  state.screen = null;
  state.mesh?.setLocal({ video: state.camera, screen: false });
  relayTracks();
  $('#btn-screen').setAttribute('aria-pressed', 'false');
  attachSelf();
  state.sig?.shareScreen(false).catch(() => {});
  announceState();
}

/** @param {boolean} open */
function openChat(open) {
  state.chatOpen = open;
  $('#chat-panel').hidden = !open;
  $('#btn-chat').setAttribute('aria-pressed', String(open));
  if (open) {
    state.unread = 0;
    $('#chat-unread').hidden = true;
    /** @type {HTMLInputElement} */ ($('#chat-input')).focus();
  }
}

async function sendChat() {
  const input = /** @type {HTMLInputElement} */ ($('#chat-input'));
  const text = input.value.trim().slice(0, MAX_CHAT);
  if (!text || !state.sig) return;
  input.value = '';
  const entry = { from: 'self', name: state.name || 'You', text, mine: true };
  state.chat.push(entry);
  renderChat(entry);
  try {
    await state.sig.broadcast({ type: 'chat', text });
  } catch (e) {
    systemChat(`Not sent: ${/** @type {Error} */ (e).message}`);
  }
}

/** @param {{name: string, text: string, mine: boolean}} m */
function renderChat(m) {
  const log = $('#chat-log');
  const li = el('li', { class: m.mine ? 'mine' : '' },
    el('div', { class: 'who' }, m.mine ? 'You' : m.name),
    el('div', { class: 'text' }, m.text));
  log.append(li);
  log.scrollTop = log.scrollHeight;
}

/** @param {string} text */
function systemChat(text) {
  const log = $('#chat-log');
  log.append(el('li', { class: 'system' }, text));
  log.scrollTop = log.scrollHeight;
}

function roomLink() {
  return `${location.origin}/r/${state.room}#${state.keyText}`;
}

function openInvite() {
  const dlg = /** @type {HTMLDialogElement} */ ($('#invite'));
  const link = roomLink();
  /** @type {HTMLInputElement} */ ($('#invite-link')).value = link;
  $('#copy-done').hidden = true;
  try {
    drawQr(/** @type {HTMLCanvasElement} */ ($('#qr')), link);
  } catch {
    $('#qr').hidden = true;
  }
  if (!dlg.open) dlg.showModal();
}

async function copyLink() {
  const input = /** @type {HTMLInputElement} */ ($('#invite-link'));
  try {
    await navigator.clipboard.writeText(input.value);
  } catch {
    input.select();
    document.execCommand('copy');
  }
  $('#copy-done').hidden = false;
}

async function leave() {
  await endCall('left');
}

/**
 * @param {'left' | 'removed' | 'failed'} why
 * @param {string} [text]
 */
async function endCall(why, text) {
  if (!state.inCall) return;
  state.inCall = false;
  if (state.statsTimer) clearInterval(state.statsTimer);
  if (state.speakTimer) clearInterval(state.speakTimer);
  if (state.relayTimer) clearInterval(state.relayTimer);
  state.relaySender?.stop();
  state.relaySender = null;
  state.mesh?.closeAll();
  state.mesh = null;
  for (const id of [...state.peers.keys()]) removePeer(id);
  state.selfView?.tile.remove();
  state.selfView = null;
  for (const t of [state.audio, state.camera, state.screen]) t?.stop();
  state.audio = state.camera = state.screen = null;
  const sig = state.sig;
  state.sig = null;
  if (sig) await sig.close();
  $('#notices').replaceChildren();
  const title = { left: 'You left the call', removed: 'The host removed you from the room', failed: 'You are no longer in the room' }[why];
  $('#ended-title').textContent = title;
  $('#ended-text').textContent = text || (why === 'removed'
    ? 'You can join again with the link unless the host locks the room.'
    : 'The room stays open while others are in it.');
  showScreen('ended');
  $('#rejoin').onclick = () => location.reload();
  $('#new-room').onclick = () => { location.href = '/'; };
}

/* ------------------------------------------------------------------ onion media relay */

/**
 * What we ask of the onion relay: everyone's media when we have no (working) WebRTC; else the
 * media of the peers that have none (the rest reach us by WebRTC); else nothing.
 */
function updateRelayNeed() {
  const sig = state.sig;
  if (!sig || !state.inCall) return;
  const from = state.relayIn ? null
    : [...state.peers.values()].filter((p) => p.noWebrtc).map((p) => p.id).sort();
  const need = state.relayIn || (from !== null && from.length > 0);
  const want = JSON.stringify([need, from]);
  if (want === state.relayWant) return;
  state.relayWant = want;
  sig.setNeedRelay(need, from).catch((e) => {
    state.relayWant = '';
    setNotice('relay', 'bad', `The onion relay is not available: ${e.message}`);
  });
}

/**
 * WebRTC found no way out (Firefox or Mullvad Browser behind a proxy gathers no ICE candidate):
 * rather than a dead call, this person sends and receives through the onion relay from now on.
 */
function switchToRelay() {
  if (state.relayIn) return;
  state.relayIn = true;
  state.mesh?.closeAll();
  state.mesh = null;
  announceState();
  updateRelayNeed();
  for (const p of state.peers.values()) renderPeer(p);
  renderPaths();
}

/** Our current tracks, to the relay sender. */
function relayTracks() {
  state.relaySender?.setTracks({ audio: state.audio, video: state.screen || state.camera });
}

/** The socket has a backlog: the relay sender drops video rather than build latency. */
function socketCongested() {
  const engine = state.socket?.io?.engine;
  if (!engine) return false;
  const ws = engine.transport && engine.transport.ws;
  const buffered = ws && typeof ws.bufferedAmount === 'number' ? ws.bufferedAmount : 0;
  return (engine.writeBuffer ? engine.writeBuffer.length : 0) > 8 || buffered > 256 * 1024;
}

/** @param {{peers: string[], added: string[]}} d */
function onRelayReceivers(d) {
  const sig = state.sig;
  const sender = state.relaySender;
  if (!sig) return;
  for (const p of state.peers.values()) {
    const was = !!p.relayReceiver;
    p.relayReceiver = sig.relayWants(p.id);
    if (was !== p.relayReceiver) renderPeer(p);
  }
  if (!sender || !state.inCall) return;
  if (!sig.wantedByRelay()) {
    sender.stop();
  } else if (!sender.running) {
    sender.start();
  } else if (d.added.some((id) => id !== sig.self)) {
    // someone new needs a fresh init segment and a key frame
    sender.restart();
  }
  renderPaths();
}

/** @param {{from: string, stream: string, seq: number, key: boolean, ts: number, data: Uint8Array}} d */
function onRelayMedia(d) {
  const p = state.peers.get(d.from);
  if (!p || !state.inCall) return;
  if (!p.relay) {
    const sig = state.sig;
    p.relay = new RelayPlayer({
      video: p.video, audio: p.audio,
      askKey: (stream) => sig?.askKeyframe(d.from, stream),
      log: (...a) => console.debug('[relay]', ...a),
    });
    p.camOff = false;
    p.stream = null;
    p.analyser = null;
    renderPeer(p);
    renderPaths();
  }
  const before = p.relay.tracks.v.appended;
  p.relay.push(d.stream, d.seq, d.key, d.ts, d.data);
  if (before === 0 && p.relay.tracks.v.appended > 0) renderPeer(p);
}

/**
 * Which path media takes between us and a peer, and why, in plain words.
 * @param {PeerView} p
 * @returns {{path: string, label: string, why: string}}
 */
function pathOf(p) {
  if (p.chatOnly) {
    return { path: 'none', label: 'chat only',
      why: 'Their browser can neither make calls (no WebRTC) nor play relayed media: text chat only.' };
  }
  if (state.relayIn) {
    return { path: 'onion', label: 'onion relay',
      why: 'Your browser has no WebRTC, so their video and sound reach you through the room\'s '
        + 'server over this page\'s own connection (the onion), end-to-end encrypted.' };
  }
  if (p.relayReceiver) {
    return { path: 'onion', label: 'onion relay',
      why: 'Their browser has no WebRTC (e.g. Tor Browser), so your video and sound reach them '
        + 'through the room\'s server over its own connection (the onion), end-to-end encrypted.' };
  }
  const q = p.tile.dataset.route || '';
  if (q.startsWith('relay')) {
    return { path: 'turn', label: 'TURN relay',
      why: 'Your browsers talk through the server\'s TURN relay over TCP, so neither learns the '
        + 'other\'s address. Media is end-to-end encrypted (WebRTC, keys checked with the room key).' };
  }
  if (q) {
    return { path: 'direct', label: 'direct',
      why: 'Your browsers send media straight to each other (WebRTC, end-to-end encrypted).' };
  }
  return { path: 'pending', label: 'connecting', why: 'Finding a path for media…' };
}

function renderPaths() {
  for (const p of state.peers.values()) {
    const el2 = /** @type {HTMLElement | null} */ (p.tile.querySelector('.path'));
    if (!el2) continue;
    const r = pathOf(p);
    p.path = r.path;
    el2.textContent = r.label;
    el2.title = r.why;
    el2.dataset.path = r.path;
  }
}

boot();
