// @ts-check
/**
 * What this browser can do, and what to tell the person about it, in plain words.
 * DOM-free: `detect` takes the global object (so node tests can pass a fake one).
 */

/**
 * @typedef {{
 *   secureContext: boolean,
 *   subtle: boolean,
 *   webSocket: boolean,
 *   peerConnection: boolean,
 *   getUserMedia: boolean,
 *   getDisplayMedia: boolean,
 *   enumerateDevices: boolean,
 *   setSinkId: boolean,
 *   webCodecs: boolean,
 *   mediaSource: boolean,
 *   mediaRecorder: boolean,
 *   onion: boolean,
 *   host?: string,
 *   torLike: boolean,
 * }} Capabilities
 */

/**
 * @param {any} g the global object (`globalThis` in a page)
 * @returns {Capabilities}
 */
export function detect(g) {
  const nav = g.navigator || {};
  const md = nav.mediaDevices;
  const host = String((g.location && g.location.hostname) || '');
  const peerConnection = typeof g.RTCPeerConnection === 'function';
  const getUserMedia = !!(md && typeof md.getUserMedia === 'function');
  const webCodecs = typeof g.VideoEncoder === 'function' && typeof g.VideoDecoder === 'function';
  return {
    secureContext: g.isSecureContext === true,
    subtle: !!(g.crypto && g.crypto.subtle),
    webSocket: typeof g.WebSocket === 'function',
    peerConnection,
    getUserMedia,
    getDisplayMedia: !!(md && typeof md.getDisplayMedia === 'function'),
    enumerateDevices: !!(md && typeof md.enumerateDevices === 'function'),
    setSinkId: !!(g.HTMLMediaElement && 'setSinkId' in g.HTMLMediaElement.prototype),
    webCodecs,
    mediaSource: typeof g.MediaSource === 'function',
    mediaRecorder: typeof g.MediaRecorder === 'function',
    onion: host.endsWith('.onion'),
    host,
    // Tor Browser: WebRTC compiled out, camera/mic off, WebCodecs hidden by resistFingerprinting
    torLike: !peerConnection && !getUserMedia && !webCodecs,
  };
}

/**
 * @typedef {{
 *   level: 'full' | 'limited' | 'none',
 *   canCall: boolean,
 *   canWatch: boolean,
 *   canSend: boolean,
 *   headline: string,
 *   lines: string[],
 * }} Verdict
 */

/**
 * What this person can do, in plain words.
 * @param {Capabilities} c
 * @returns {Verdict}
 */
export function assess(c) {
  /** @type {string[]} */
  const lines = [];
  if ((!c.secureContext || !c.subtle) && c.onion) {
    // Chromium and its kin do not count http://*.onion as secure (Tor Browser, Mullvad Browser
    // and Firefox with dom.securecontext.allowlist_onions do)
    lines.push('This browser does not treat an http .onion page as a secure one, so it will not '
      + 'encrypt or open messages here. Open this same link in Tor Browser (or Mullvad Browser '
      + 'or Firefox with Tor as their proxy). In Chromium or Brave, start the browser with '
      + `--unsafely-treat-insecure-origin-as-secure=http://${c.host || '<this .onion address>'} `
      + 'in addition to Tor as its proxy.');
  } else if (!c.secureContext || !c.subtle) {
    lines.push('This page was not opened over a secure connection, so the browser will not '
      + 'encrypt or open messages. Open the room through its .onion address in Tor Browser, or '
      + 'through an https address (or 127.0.0.1 on the same computer).');
  }
  if (!c.secureContext || !c.subtle) {
    return {
      level: 'none', canCall: false, canWatch: false, canSend: false,
      headline: 'This page cannot encrypt here',
      lines,
    };
  }
  if (!c.webSocket) {
    lines.push('This browser cannot keep a live connection to the server (WebSocket is off).');
    return { level: 'none', canCall: false, canWatch: false, canSend: false,
      headline: 'This browser cannot connect to the room', lines };
  }
  if (!c.peerConnection) {
    // no WebRTC: media can still come (and go) through the room's onion relay, over this page's
    // own connection, end-to-end encrypted (MediaSource to play, MediaRecorder to send)
    const canWatch = c.mediaSource;
    const canSend = canWatch && c.getUserMedia && c.mediaRecorder;
    if (c.torLike) {
      lines.push('You are probably using Tor Browser. It has WebRTC (the browser\'s calling '
        + 'technology) switched off for good, and no setting brings it back.');
    } else {
      lines.push('This browser has WebRTC (the browser\'s calling technology) switched off.');
    }
    if (canWatch) {
      lines.push('You will still see and hear the others: their video and sound reach you '
        + 'through the room\'s onion relay, over this page\'s own connection, end-to-end '
        + 'encrypted. It may lag a little behind a direct call.');
      lines.push(canSend
        ? 'Your camera and microphone are sent the same way.'
        : 'The others will not see or hear you: this browser does not let the page use a camera '
          + 'or microphone. You can write in the encrypted chat.');
    } else {
      lines.push('You can still read and write in the encrypted chat of this room.');
    }
    lines.push('For a direct call: open this same link (with everything after the #) in '
      + 'Mullvad Browser, Firefox or Chromium / Brave. Behind Tor, Firefox and Mullvad Browser '
      + 'need one setting in about:config: media.peerconnection.ice.proxy_only_if_behind_proxy '
      + '= false (media still goes only through the room\'s relay, over Tor).');
    return {
      level: 'limited', canCall: false, canWatch, canSend,
      headline: canWatch
        ? (c.torLike ? 'Tor Browser: you watch and chat through the onion relay'
          : 'No WebRTC here: media comes through the onion relay')
        : (c.torLike ? 'Tor Browser cannot join video calls' : 'Video calls are off in this browser'),
      lines,
    };
  }
  if (!c.getUserMedia) {
    lines.push('This browser does not let the page use a camera or microphone (it may be '
      + 'switched off in its settings, e.g. media.navigator.enabled in Firefox). You can join, '
      + 'see and hear the others and chat, but they will not see or hear you.');
    return { level: 'limited', canCall: true, canWatch: true, canSend: false,
      headline: 'You can watch and chat, but not send video or sound', lines };
  }
  if (!c.getDisplayMedia) {
    lines.push('Screen sharing is not available in this browser.');
  }
  return {
    level: 'full', canCall: true, canWatch: true, canSend: true,
    headline: 'Ready for an end-to-end encrypted call',
    lines,
  };
}

/**
 * A plain explanation for a getUserMedia failure.
 * @param {unknown} err
 * @returns {string}
 */
export function explainMediaError(err) {
  const name = err && typeof err === 'object' && 'name' in err ? String(err.name) : '';
  switch (name) {
    case 'NotAllowedError':
    case 'SecurityError':
      return 'The browser was not allowed to use your camera or microphone. Allow it in the '
        + 'address bar (the camera icon) and try again, or join without them.';
    case 'NotFoundError':
    case 'OverconstrainedError':
      return 'No camera or microphone was found. You can join without them.';
    case 'NotReadableError':
    case 'AbortError':
      return 'Your camera or microphone is busy in another program. Close it there and try '
        + 'again, or join without it.';
    default:
      return 'The camera or microphone could not be started. You can join without them.';
  }
}

/**
 * What to say when ICE gathered no candidate at all (the TURN relay cannot be reached).
 * `relay`: the call goes on through the onion relay instead (this browser can play it).
 * @param {{ firefox: boolean, relayOnly: boolean, relay?: boolean }} o
 * @returns {string}
 */
export function explainNoCandidates(o) {
  const base = o.relay
    ? 'Your browser found no way to make a direct call (WebRTC reached no relay), so you now '
      + 'see and hear the others, and they you, through the room\'s onion relay: over this '
      + 'page\'s own connection, end-to-end encrypted, a little behind a direct call. The chat '
      + 'works as before.'
    : 'Your browser found no way to reach this room\'s media relay, so you cannot see '
      + 'or hear the others (the chat still works).';
  if (o.firefox) {
    return `${base} For a direct call in Firefox or Mullvad Browser behind Tor or another proxy, `
      + 'open about:config and set media.peerconnection.ice.proxy_only_if_behind_proxy to false, '
      + 'then reload. That is safe here: media still goes only to the room\'s relay, over TCP '
      + 'through your proxy, so nobody learns your address.';
  }
  return `${base} A firewall or proxy may block it${o.relayOnly ? ' (the relay is reached over TCP)' : ''}; `
    + 'try another network or browser.';
}
