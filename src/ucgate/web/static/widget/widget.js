// The customer chat widget: POST /v1/widget/sessions (public, Origin-checked), chat over
// the session's own token, and "call me in the browser": a JsSIP call as the session's
// guest to sip:session@<domain> with X-UCGate-Session, which ucgate rings at the agent.
import { api, el, httpWsUrl, LiveSocket, sipWsUrl, ToneMeter } from '/web/common/ucgate.js';

/* global JsSIP */
const $ = (id) => document.getElementById(id);
const state = { session: null, messages: new Map(), socket: null, ua: null, call: null, callState: 'no call', meter: null };

function setStatus(text) {
  $('status').textContent = text;
}

async function start(name, email) {
  const body = {};
  if (name) body.name = name;
  if (email) body.email = email;
  body.context = { page: location.href.split('?')[0] };
  const answer = await api('/v1/widget/sessions', { method: 'POST', body });
  state.session = answer;
  $('start-view').hidden = true;
  $('chat-view').hidden = false;
  $('pin').textContent = answer.pin ? `· PIN ${answer.pin}` : '';
  setStatus('Waiting for an agent');
  state.socket = new LiveSocket(httpWsUrl(`/v1/chat/${answer.session_id}`, answer.token), (m) => {
    state.messages.set(m.seq, m);
    render();
  });
  pollStatus();
  return answer;
}

async function refresh() {
  const s = state.session;
  if (!s) return null;
  const view = await api(`/v1/widget/sessions/${s.session_id}`, { token: s.token });
  if (!view.open) setStatus('Closed');
  else if (view.agent) setStatus(`Connected to ${view.agent}`);
  else setStatus('Waiting for an agent');
  return view;
}

function pollStatus() {
  const tick = async () => {
    try {
      const view = await refresh();
      if (view && !view.open) return;
    } catch (err) {
      $('chat-error').textContent = err.message;
    }
    setTimeout(tick, 2000);
  };
  tick();
}

function render() {
  const log = $('log');
  log.replaceChildren(
    ...[...state.messages.values()]
      .sort((a, b) => a.seq - b.seq)
      .map((m) => el('div', { class: `msg ${m.sender}` }, el('b', {}, m.sender === 'agent' ? m.name || 'Agent' : 'You'), ': ', m.text)),
  );
  log.scrollTop = log.scrollHeight;
}

async function send(text) {
  const s = state.session;
  return api(`/v1/widget/sessions/${s.session_id}/messages`, { method: 'POST', body: { text }, token: s.token });
}

$('start-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  $('start-error').textContent = '';
  try {
    await start($('name').value.trim(), $('email').value.trim());
  } catch (err) {
    $('start-error').textContent = err.message;
  }
});

$('send-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const text = $('text').value.trim();
  if (!text) return;
  $('text').value = '';
  try {
    await send(text);
  } catch (err) {
    $('chat-error').textContent = err.message;
  }
});

// --- call me in the browser ----------------------------------------------------------------

function setCall(value) {
  state.callState = value;
  $('call-state').textContent = value;
  $('call').hidden = state.call !== null;
  $('hangup').hidden = state.call === null;
}

function ua() {
  if (state.ua) return state.ua;
  const sip = state.session.sip;
  // ?debug=1 logs JsSIP's SIP traffic to the console.
  if (new URLSearchParams(location.search).has('debug')) JsSIP.debug.enable('JsSIP:*');
  else JsSIP.debug.disable('JsSIP:*');
  const agent = new JsSIP.UA({
    sockets: [new JsSIP.WebSocketInterface(sipWsUrl(sip))],
    uri: sip.uri,
    authorization_user: sip.user,
    password: sip.password,
    register: false, // a guest never registers; it only places its one call
    session_timers: false,
    user_agent: 'ucgate-widget (JsSIP)',
  });
  agent.start();
  state.ua = agent;
  return agent;
}

function callMe() {
  const sip = state.session.sip;
  const session = ua().call(sip.call, {
    mediaConstraints: { audio: true, video: false },
    pcConfig: { iceServers: [] },
    extraHeaders: sip.headers,
  });
  state.call = session;
  setCall('calling');
  session.on('progress', () => setCall('ringing'));
  const attach = () => {
    const pc = session.connection;
    const tracks = pc ? pc.getReceivers().map((r) => r.track).filter((t) => t && t.kind === 'audio') : [];
    if (!tracks.length) return;
    const stream = new MediaStream(tracks);
    $('remote-audio').srcObject = stream;
    $('remote-audio').play().catch(() => {});
    if (state.meter) state.meter.close();
    state.meter = new ToneMeter(stream);
  };
  session.on('accepted', () => {
    setCall('answered');
    attach();
  });
  session.on('confirmed', () => {
    setCall('confirmed');
    attach();
  });
  const ended = (e) => {
    state.call = null;
    if (state.meter) state.meter.close();
    state.meter = null;
    setCall(`ended (${e.cause})`);
  };
  session.on('ended', ended);
  session.on('failed', ended);
  return session;
}

$('call').addEventListener('click', () => {
  $('chat-error').textContent = '';
  try {
    callMe();
  } catch (err) {
    $('chat-error').textContent = err.message;
  }
});
$('hangup').addEventListener('click', () => state.call && state.call.terminate());

window.ucgateWidget = {
  start,
  send,
  callMe: () => {
    callMe();
  },
  hangup: () => state.call && state.call.terminate(),
  mediaStats: () => (state.meter ? state.meter.stats() : null),
  state: () => ({
    session_id: state.session ? state.session.session_id : null,
    status: $('status').textContent,
    call: state.callState,
    messages: [...state.messages.values()].sort((a, b) => a.seq - b.seq).map((m) => ({ sender: m.sender, text: m.text })),
  }),
};
