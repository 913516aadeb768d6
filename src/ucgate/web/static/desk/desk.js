// The agent desk: JsSIP softphone over SIP WebSocket (RFC 7118), own presence, own
// sessions live from /v1/events, chat, team presence from /v1/presence/stream.
// window.ucgateDesk is the page's diagnostic API (speaker test; used by the browser tests).
import {
  api,
  el,
  httpWsUrl,
  LiveSocket,
  sipWsUrl,
  ToneMeter,
} from '/web/common/ucgate.js';

/* global JsSIP */
const $ = (id) => document.getElementById(id);
const STATUSES = ['available', 'away', 'busy', 'dnd', 'break', 'offline'];
const DTMF_KEYS = ['1', '2', '3', '4', '5', '6', '7', '8', '9', '*', '0', '#'];

const state = {
  token: null,
  agent: null,
  password: null,
  sip: null,
  ua: null,
  registration: 'unregistered',
  call: null, // the JsSIP RTCSession
  callState: 'idle',
  held: false,
  direction: null,
  remote: null,
  meter: null,
  dtmfSent: [],
  sessions: new Map(),
  chats: new Map(), // session id -> {socket, messages: Map(seq -> message)}
  team: new Map(),
  presence: null,
  events: [],
  eventsSocket: null,
  presenceStream: null,
};

// --- sign in -----------------------------------------------------------------------------

async function login(agent, password) {
  const answer = await api('/v1/auth/login', { method: 'POST', body: { agent, password } });
  state.token = answer.token;
  state.agent = answer.agent;
  state.password = password;
  state.sip = answer.sip;
  $('who').textContent = answer.display_name || answer.agent;
  $('login-view').hidden = true;
  $('desk-view').hidden = false;
  $('logout').hidden = false;
  startPhone();
  startPresence();
  await startSessions();
  return answer;
}

$('login-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  $('login-error').textContent = '';
  try {
    await login($('login-agent').value.trim(), $('login-password').value);
  } catch (err) {
    $('login-error').textContent = err.message;
  }
});

$('logout').addEventListener('click', () => {
  if (state.ua) state.ua.stop();
  if (state.eventsSocket) state.eventsSocket.close();
  if (state.presenceStream) state.presenceStream.close();
  for (const chat of state.chats.values()) chat.socket.close();
  location.reload();
});

// --- phone ---------------------------------------------------------------------------------

function setRegistration(value) {
  state.registration = value;
  const label = { registered: 'Registered', unregistered: 'Not registered', failed: 'Registration failed', connecting: 'Connecting' }[value] || value;
  $('reg-state').textContent = label;
  $('reg-state').className = `badge ${value === 'registered' ? 'st-ok' : ''}`;
}

function startPhone() {
  // ?debug=1 logs JsSIP's SIP traffic to the console.
  if (new URLSearchParams(location.search).has('debug')) JsSIP.debug.enable('JsSIP:*');
  else JsSIP.debug.disable('JsSIP:*');
  const socket = new JsSIP.WebSocketInterface(sipWsUrl(state.sip));
  const ua = new JsSIP.UA({
    sockets: [socket],
    uri: state.sip.uri,
    authorization_user: state.agent,
    password: state.password,
    register: true,
    register_expires: 300,
    session_timers: false,
    user_agent: 'ucgate-desk (JsSIP)',
  });
  state.ua = ua;
  setRegistration('connecting');
  ua.on('registered', () => setRegistration('registered'));
  ua.on('unregistered', () => setRegistration('unregistered'));
  ua.on('registrationFailed', (e) => {
    setRegistration('failed');
    $('phone-error').textContent = `registration failed: ${e.cause}`;
  });
  ua.on('newRTCSession', (e) => onNewSession(e.session, e.originator, e.request));
  ua.start();
}

const MEDIA = { mediaConstraints: { audio: true, video: false }, pcConfig: { iceServers: [] } };

function setCall(callState) {
  state.callState = callState;
  $('call-state').textContent = state.held ? `${callState} (held)` : callState;
  const live = state.call !== null;
  $('hangup').disabled = !live;
  $('hold').disabled = !(callState === 'confirmed' && !state.held);
  $('resume').disabled = !(callState === 'confirmed' && state.held);
  $('dial').disabled = live;
  $('incoming').hidden = !(callState === 'ringing' && state.direction === 'incoming');
  $('call-peer').textContent = live && state.remote ? state.remote : '';
}

function onNewSession(session, originator, request) {
  if (state.call !== null) {
    session.terminate({ status_code: 486 });
    return;
  }
  state.call = session;
  state.held = false;
  state.dtmfSent = [];
  state.direction = originator === 'remote' ? 'incoming' : 'outgoing';
  state.remote = session.remote_identity ? session.remote_identity.uri.toString() : null;
  $('incoming-from').textContent = state.remote || '';
  session.on('progress', () => setCall('ringing'));
  session.on('accepted', () => {
    setCall('answered');
    attachRemoteAudio(session);
  });
  session.on('confirmed', () => {
    setCall('confirmed');
    attachRemoteAudio(session);
  });
  session.on('hold', () => {
    state.held = true;
    setCall(state.callState);
  });
  session.on('unhold', () => {
    state.held = false;
    setCall(state.callState);
  });
  const ended = (e) => {
    if (state.call !== session) return;
    state.call = null;
    state.held = false;
    state.lastEnd = { cause: e.cause, originator: e.originator };
    if (state.meter) state.meter.close();
    state.meter = null;
    $('remote-audio').srcObject = null;
    setCall(e.cause === JsSIP.C.causes.BYE ? 'ended' : `ended (${e.cause})`);
  };
  session.on('ended', ended);
  session.on('failed', ended);
  setCall(state.direction === 'incoming' ? 'ringing' : 'calling');
}

function attachRemoteAudio(session) {
  const pc = session.connection;
  if (!pc) return;
  const tracks = pc.getReceivers().map((r) => r.track).filter((t) => t && t.kind === 'audio');
  if (!tracks.length) return;
  const stream = new MediaStream(tracks);
  // Chromium only feeds a remote WebRTC track into WebAudio while a media element plays it.
  const audio = $('remote-audio');
  audio.srcObject = stream;
  audio.play().catch(() => {});
  if (state.meter) state.meter.close();
  state.meter = new ToneMeter(stream);
}

function target(value) {
  const v = value.trim();
  return v.startsWith('sip:') ? v : `sip:${v}@${state.sip.domain}`;
}

function call(to, extraHeaders = []) {
  if (!state.ua) throw new Error('not signed in');
  $('phone-error').textContent = '';
  return state.ua.call(target(to), { ...MEDIA, extraHeaders });
}

function answer() {
  if (state.call && state.direction === 'incoming') state.call.answer(MEDIA);
}

function hangup() {
  if (state.call) state.call.terminate();
}

$('dial-form').addEventListener('submit', (e) => {
  e.preventDefault();
  try {
    call($('dial-target').value);
  } catch (err) {
    $('phone-error').textContent = err.message;
  }
});
$('answer').addEventListener('click', answer);
$('decline').addEventListener('click', () => state.call && state.call.terminate({ status_code: 486 }));
$('hangup').addEventListener('click', hangup);
$('hold').addEventListener('click', () => state.call && state.call.hold());
$('resume').addEventListener('click', () => state.call && state.call.unhold());
for (const key of DTMF_KEYS) {
  $('keypad').append(
    el('button', { type: 'button', 'data-dtmf': key, onclick: () => sendDTMF(key) }, key),
  );
}

// Keys go in the media stream (RFC 4733 telephone-event, RTCDTMFSender) whenever the
// call negotiated it, as PSTN gateways expect; SIP INFO (relayed by ucgate) otherwise.
function sendDTMF(key) {
  if (!state.call || state.callState !== 'confirmed') return;
  const pc = state.call.connection;
  const sender = pc && pc.getSenders().find((s) => s.track && s.track.kind === 'audio');
  const inband = Boolean(sender && sender.dtmf && sender.dtmf.canInsertDTMF);
  state.call.sendDTMF(key, { transportType: inband ? 'RFC2833' : 'INFO' });
  state.dtmfSent.push(key);
  state.dtmfTransport = inband ? 'rfc4733' : 'info';
}

setInterval(() => {
  if (!state.meter) {
    $('speaker').textContent = '–';
    return;
  }
  const s = state.meter.stats();
  $('speaker').textContent = `${Math.round(s.frequency)} Hz, ${s.energy_db.toFixed(1)} dBFS`;
}, 500);

// --- presence ------------------------------------------------------------------------------

for (const s of STATUSES) $('status-select').append(el('option', { value: s }, s));

$('status-set').addEventListener('click', async () => {
  $('status-error').textContent = '';
  try {
    await setStatus($('status-select').value);
  } catch (err) {
    $('status-error').textContent = err.message;
  }
});

async function setStatus(status, note) {
  const body = note ? { status, note } : { status };
  return api(`/v1/presence/${encodeURIComponent(state.agent)}/status`, {
    method: 'PUT',
    body,
    token: state.token,
  });
}

function onPresence(doc) {
  state.team.set(doc.agent, doc);
  if (doc.agent === state.agent) {
    state.presence = doc;
    $('my-status').textContent = doc.status;
    $('my-status').className = `badge status-${doc.status}`;
  }
  renderTeam();
}

function renderTeam() {
  const rows = [...state.team.values()].sort((a, b) => a.agent.localeCompare(b.agent));
  $('team').replaceChildren(
    ...rows.map((d) =>
      el(
        'tr',
        { 'data-agent': d.agent },
        el('td', {}, d.agent),
        el('td', {}, el('span', { class: `badge status-${d.status}` }, d.status)),
        el('td', {}, d.voice),
      ),
    ),
  );
}

function startPresence() {
  const url = `/v1/presence/stream?access_token=${encodeURIComponent(state.token)}`;
  const stream = new EventSource(url);
  state.presenceStream = stream;
  stream.addEventListener('snapshot', (e) => {
    const snap = JSON.parse(e.data);
    state.team.clear();
    for (const doc of snap.agents) onPresence(doc);
  });
  stream.addEventListener('change', (e) => onPresence(JSON.parse(e.data).document));
}

// --- sessions ------------------------------------------------------------------------------

async function startSessions() {
  const me = encodeURIComponent(state.agent);
  const page = await api(`/v1/sessions?open=true&agent=${me}`, { token: state.token });
  for (const s of page.sessions) upsertSession(s);
  state.eventsSocket = new LiveSocket(httpWsUrl('/v1/events', state.token), (event) => {
    state.events.push({ type: event.type, session_id: event.session_id, agent: event.agent });
    if (state.events.length > 200) state.events.shift();
    upsertSession(event.session);
  });
}

function mine(session) {
  return session.agent === state.agent || session.channels.some((c) => c.agent === state.agent);
}

function upsertSession(session) {
  if (session.closed_at !== null || !mine(session)) state.sessions.delete(session.id);
  else state.sessions.set(session.id, session);
  for (const [id, chat] of state.chats) {
    if (!state.sessions.has(id)) {
      chat.socket.close();
      state.chats.delete(id);
    }
  }
  for (const s of state.sessions.values()) {
    const chatLive = s.channels.some(
      (c) => c.media === 'chat' && c.agent === state.agent && ['active', 'held'].includes(c.state),
    );
    if (chatLive && !state.chats.has(s.id)) openChat(s.id);
  }
  renderSessions();
}

function openChat(id) {
  const chat = { messages: new Map(), socket: null };
  state.chats.set(id, chat);
  chat.socket = new LiveSocket(httpWsUrl(`/v1/chat/${id}`, state.token), (m) => {
    chat.messages.set(m.seq, m);
    renderSessions();
  });
}

async function sessionAction(id, channel, action) {
  return api(`/v1/sessions/${id}/channels/${channel}/${action}`, {
    method: 'POST',
    body: {},
    token: state.token,
  });
}

async function sendChat(id, text) {
  return api(`/v1/chat/${id}/messages`, { method: 'POST', body: { text }, token: state.token });
}

// Chat → voice: the elevation API calls the customer and rings this agent (RFC 3725 3PCC).
async function callCustomer(id, to) {
  return api(`/v1/sessions/${id}/channels`, {
    method: 'POST',
    body: { media: 'voice', to },
    token: state.token,
  });
}

function renderSessions() {
  const box = $('sessions');
  const focused = document.activeElement && document.activeElement.dataset.chatInput;
  if (!state.sessions.size) {
    box.replaceChildren(el('p', {}, el('small', {}, 'No open sessions.')));
    return;
  }
  const cards = [];
  for (const s of state.sessions.values()) {
    const err = el('div', { class: 'error' });
    const guard = (fn) => async () => {
      err.textContent = '';
      try {
        await fn();
      } catch (e) {
        err.textContent = e.message;
      }
    };
    const channels = s.channels.map((c) =>
      el(
        'div',
        { class: 'row', 'data-channel': c.id, 'data-media': c.media, 'data-state': c.state },
        el('span', { class: 'badge' }, c.media),
        el('span', {}, c.state),
        // A voice channel is accepted by answering the phone, not with a button.
        c.state === 'offered' && c.agent === state.agent && c.media !== 'voice'
          ? el('button', { 'data-action': 'accept', onclick: guard(() => sessionAction(s.id, c.id, 'accept')) }, 'Accept')
          : null,
        c.state === 'offered' && c.agent === state.agent && c.media !== 'voice'
          ? el('button', { class: 'danger', 'data-action': 'reject', onclick: guard(() => sessionAction(s.id, c.id, 'reject')) }, 'Reject')
          : null,
        c.state === 'active' && c.media !== 'voice'
          ? el('button', { 'data-action': 'end', onclick: guard(() => sessionAction(s.id, c.id, 'end')) }, 'End')
          : null,
        c.state === 'wrap_up'
          ? el('button', { 'data-action': 'wrap_up_done', onclick: guard(() => sessionAction(s.id, c.id, 'wrap_up_done')) }, 'Wrap-up done')
          : null,
      ),
    );
    const context = Object.entries(s.context || {}).map(([k, v]) =>
      el('tr', {}, el('th', {}, k), el('td', {}, typeof v === 'string' ? v : JSON.stringify(v))),
    );
    const chat = state.chats.get(s.id);
    let chatBox = null;
    if (chat) {
      const log = el(
        'div',
        { class: 'chat', 'data-testid': 'chat-log' },
        ...[...chat.messages.values()]
          .sort((a, b) => a.seq - b.seq)
          .map((m) => el('div', { class: `msg ${m.sender}` }, el('b', {}, m.sender === 'agent' ? 'You' : m.name || 'Customer'), ': ', m.text)),
      );
      const input = el('input', { placeholder: 'Reply…', 'data-chat-input': s.id });
      const form = el(
        'form',
        {
          class: 'row',
          onsubmit: (e) => {
            e.preventDefault();
            const text = input.value.trim();
            if (!text) return;
            input.value = '';
            guard(() => sendChat(s.id, text))();
          },
        },
        input,
        el('button', { type: 'submit' }, 'Send'),
      );
      chatBox = el('div', {}, log, form);
      setTimeout(() => {
        log.scrollTop = log.scrollHeight;
      });
    }
    const phone = el('input', { placeholder: '+1555…', value: s.customer.phone || '', 'aria-label': 'Customer number' });
    const hasVoice = s.channels.some((c) => c.media === 'voice' && c.state !== 'ended');
    const elevate = el(
      'form',
      {
        class: 'row',
        onsubmit: (e) => {
          e.preventDefault();
          guard(() => callCustomer(s.id, phone.value.trim()))();
        },
      },
      phone,
      el('button', { type: 'submit', 'data-action': 'call-customer', ...(hasVoice ? { disabled: '' } : {}) }, 'Call customer'),
    );
    cards.push(
      el(
        'article',
        { 'data-session': s.id },
        el('h3', {}, s.customer.name || s.customer.phone || s.customer.email || 'Customer', ' ', el('small', {}, `· ${s.queue || ''} · PIN ${s.pin || '–'}`)),
        ...channels,
        context.length ? el('table', { class: 'context' }, ...context) : null,
        chatBox,
        s.channels.some((c) => c.media === 'chat') ? elevate : null,
        el('button', { class: 'danger', 'data-action': 'close', onclick: guard(() => api(`/v1/sessions/${s.id}/close`, { method: 'POST', body: { force: true }, token: state.token })) }, 'Close session'),
        err,
      ),
    );
  }
  box.replaceChildren(...cards);
  if (focused) {
    const again = box.querySelector(`[data-chat-input="${focused}"]`);
    if (again) again.focus();
  }
}

// --- diagnostic API ------------------------------------------------------------------------

window.ucgateDesk = {
  login,
  call: (to, headers) => {
    call(to, headers);
  },
  answer,
  hangup,
  hold: () => state.call && state.call.hold(),
  resume: () => state.call && state.call.unhold(),
  sendDTMF,
  setStatus,
  callCustomer,
  sendChat,
  // The far end's audio as heard here: dominant frequency (Hz) and level.
  mediaStats: () => (state.meter ? state.meter.stats() : null),
  state: () => ({
    agent: state.agent,
    registration: state.registration,
    call: state.call
      ? { state: state.callState, held: state.held, direction: state.direction, remote: state.remote }
      : { state: state.callState },
    lastEnd: state.lastEnd || null,
    dtmfSent: [...state.dtmfSent],
    dtmfTransport: state.dtmfTransport || null,
    presence: state.presence ? state.presence.status : null,
    team: Object.fromEntries([...state.team.values()].map((d) => [d.agent, d.status])),
    sessions: [...state.sessions.values()].map((s) => ({
      id: s.id,
      agent: s.agent,
      channels: s.channels.map((c) => ({ id: c.id, media: c.media, state: c.state, agent: c.agent })),
    })),
    chats: Object.fromEntries(
      [...state.chats].map(([id, c]) => [id, [...c.messages.values()].map((m) => ({ sender: m.sender, text: m.text }))]),
    ),
    events: state.events.map((e) => e.type),
  }),
};
