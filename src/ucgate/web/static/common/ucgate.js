// Shared helpers of ucgate's pages: REST calls, WebSockets that reconnect, a tone meter.
// Plain ES module, no build step. JsSIP is the classic script /web/vendor/jssip.min.js.

export class ApiError extends Error {
  constructor(status, body) {
    const err = (body && body.error) || {};
    super(err.message || `HTTP ${status}`);
    this.status = status;
    this.field = err.field || null;
  }
}

export async function api(path, { method = 'GET', body, token } = {}) {
  const headers = {};
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

export async function webConfig() {
  return api('/v1/web/config');
}

// The SIP WebSocket URL: configured, else the first ws listener on the page's own host.
export function sipWsUrl(sip) {
  if (sip.ws_url) return sip.ws_url;
  if (!sip.ws_port) throw new Error('ucgate has no ws: SIP listener');
  return `ws://${location.hostname}:${sip.ws_port}`;
}

export function httpWsUrl(path, token) {
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  const sep = path.includes('?') ? '&' : '?';
  return `${scheme}://${location.host}${path}${sep}access_token=${encodeURIComponent(token)}`;
}

// A WebSocket of JSON frames that reconnects (bounded back-off) until closed.
export class LiveSocket {
  constructor(url, onMessage, { onOpen, onState } = {}) {
    this.url = url;
    this.onMessage = onMessage;
    this.onOpen = onOpen;
    this.onState = onState || (() => {});
    this.closed = false;
    this.delay = 500;
    this._open();
  }

  _open() {
    const ws = new WebSocket(this.url);
    this.ws = ws;
    ws.onopen = () => {
      this.delay = 500;
      this.onState('open');
      if (this.onOpen) this.onOpen();
    };
    ws.onmessage = (e) => this.onMessage(JSON.parse(e.data));
    ws.onclose = () => {
      this.onState('closed');
      if (this.closed) return;
      setTimeout(() => this._open(), this.delay);
      this.delay = Math.min(this.delay * 2, 10000);
    };
  }

  close() {
    this.closed = true;
    if (this.ws) this.ws.close();
  }
}

// The dominant frequency and level of a MediaStream, through a WebAudio AnalyserNode:
// the desk's "speaker test", and what the browser tests read to hear the far end's tone.
export class ToneMeter {
  constructor(stream) {
    this.ctx = new AudioContext();
    this.source = this.ctx.createMediaStreamSource(stream);
    this.analyser = this.ctx.createAnalyser();
    this.analyser.fftSize = 8192;
    this.analyser.smoothingTimeConstant = 0.2;
    this.source.connect(this.analyser);
    this.freq = new Float32Array(this.analyser.frequencyBinCount);
    this.time = new Float32Array(this.analyser.fftSize);
  }

  stats() {
    this.analyser.getFloatFrequencyData(this.freq);
    this.analyser.getFloatTimeDomainData(this.time);
    // Skip the lowest bins (DC and hum) when looking for the peak.
    let best = 3;
    for (let i = 4; i < this.freq.length; i++) if (this.freq[i] > this.freq[best]) best = i;
    let sum = 0;
    for (const v of this.time) sum += v * v;
    const rms = Math.sqrt(sum / this.time.length);
    return {
      frequency: (best * this.ctx.sampleRate) / this.analyser.fftSize,
      peak_db: this.freq[best],
      rms,
      energy_db: rms > 0 ? 20 * Math.log10(rms) : -Infinity,
      sample_rate: this.ctx.sampleRate,
      context_state: this.ctx.state,
    };
  }

  close() {
    this.source.disconnect();
    this.ctx.close();
  }
}

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') node.className = v;
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(node.dataset, v);
    else node.setAttribute(k, v);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

export function fmtSeconds(s) {
  if (s === null || s === undefined || Number.isNaN(s)) return '–';
  s = Math.round(s);
  const m = Math.floor(s / 60);
  return m ? `${m}m ${String(s % 60).padStart(2, '0')}s` : `${s}s`;
}
