// The supervisor wallboard: agents' presence live (/v1/presence/stream), queues and
// sessions by channel live (/v1/sessions + /v1/events), AHT/ATT from /v1/metrics/queues.
// Charts are hand-written SVG.
import { api, el, fmtSeconds, httpWsUrl, LiveSocket } from '/web/common/ucgate.js';

const $ = (id) => document.getElementById(id);
const SVG = 'http://www.w3.org/2000/svg';
const COLORS = { available: '#66bb6a', 'on-call': '#ffa726', ringing: '#ffca28', busy: '#ffa726', offline: '#bdbdbd' };
const state = { key: null, agents: new Map(), sessions: new Map(), metrics: [], waitingHistory: [], stream: null, events: null };

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

// Horizontal bars: [[label, value, color]].
function barChart(container, bars, { width = 320, row = 22 } = {}) {
  const max = Math.max(1, ...bars.map((b) => b[1]));
  const height = Math.max(row, bars.length * row);
  const root = svg('svg', { width, height, viewBox: `0 0 ${width} ${height}`, role: 'img' });
  bars.forEach(([label, value, color], i) => {
    const y = i * row;
    const w = ((width - 130) * value) / max;
    root.append(
      svg('text', { x: 0, y: y + 15, 'font-size': 12 }, label),
      svg('rect', { x: 90, y: y + 4, width: Math.max(w, 1), height: row - 8, fill: color || '#42a5f5', 'data-label': label, 'data-value': value }),
      svg('text', { x: 96 + w, y: y + 15, 'font-size': 12 }, value),
    );
  });
  container.replaceChildren(root);
}

function sparkline(container, values, { width = 320, height = 60 } = {}) {
  const max = Math.max(1, ...values);
  const step = values.length > 1 ? width / (values.length - 1) : width;
  const points = values.map((v, i) => `${(i * step).toFixed(1)},${(height - 4 - ((height - 8) * v) / max).toFixed(1)}`).join(' ');
  container.replaceChildren(
    svg('svg', { width, height, viewBox: `0 0 ${width} ${height}`, role: 'img' },
      svg('polyline', { points, fill: 'none', stroke: '#1769aa', 'stroke-width': 2 }),
      svg('text', { x: 2, y: 12, 'font-size': 11, fill: '#66727f' }, `waiting, last ${values.length * 2}s (max ${max})`)),
  );
}

// --- agents --------------------------------------------------------------------------------

function renderAgents() {
  const docs = [...state.agents.values()].sort((a, b) => a.agent.localeCompare(b.agent));
  $('agents').replaceChildren(
    ...docs.map((d) =>
      el('tr', { 'data-agent': d.agent, 'data-status': d.status },
        el('td', {}, d.agent),
        el('td', {}, el('span', { class: `badge status-${d.status}` }, d.status)),
        el('td', {}, d.voice),
        el('td', {}, d.channels.filter((c) => c.used).map((c) => `${c.channel} ${c.used}/${c.capacity}`).join(', ') || '–'),
      ),
    ),
  );
  const counts = new Map();
  for (const d of docs) counts.set(d.status, (counts.get(d.status) || 0) + 1);
  barChart($('status-chart'), [...counts].sort().map(([s, n]) => [s, n, COLORS[s] || '#ef5350']));
}

function startPresence() {
  const stream = new EventSource(`/v1/presence/stream?access_token=${encodeURIComponent(state.key)}`);
  state.stream = stream;
  stream.onopen = () => ($('live').textContent = 'live');
  stream.onerror = () => ($('live').textContent = 'reconnecting');
  stream.addEventListener('snapshot', (e) => {
    state.agents.clear();
    for (const d of JSON.parse(e.data).agents) state.agents.set(d.agent, d);
    renderAgents();
  });
  stream.addEventListener('change', (e) => {
    const change = JSON.parse(e.data);
    state.agents.set(change.agent, change.document);
    renderAgents();
  });
}

// --- queues and sessions -------------------------------------------------------------------

function queuedSince(channel) {
  for (let i = channel.timeline.length - 1; i >= 0; i--) {
    if (channel.timeline[i].state !== 'queued') return i + 1 < channel.timeline.length ? channel.timeline[i + 1].at : channel.created_at;
  }
  return channel.created_at;
}

function renderQueues() {
  const now = Date.now() / 1000;
  const queues = new Map();
  const byMedia = new Map();
  let waitingTotal = 0;
  for (const s of state.sessions.values()) {
    for (const c of s.channels) {
      if (c.state === 'ended') continue;
      byMedia.set(c.media, (byMedia.get(c.media) || 0) + 1);
      const q = c.queue || s.queue || '–';
      if (!queues.has(q)) queues.set(q, { waiting: 0, longest: 0 });
      if (c.state === 'queued') {
        const entry = queues.get(q);
        entry.waiting += 1;
        waitingTotal += 1;
        entry.longest = Math.max(entry.longest, now - queuedSince(c));
      }
    }
  }
  const latest = new Map();
  for (const row of state.metrics) {
    const prev = latest.get(row.queue);
    if (!prev || row.interval_start > prev.interval_start) latest.set(row.queue, row);
    if (!queues.has(row.queue)) queues.set(row.queue, { waiting: 0, longest: 0 });
  }
  $('queues').replaceChildren(
    ...[...queues].sort().map(([q, v]) => {
      const m = latest.get(q) || {};
      return el('tr', { 'data-queue': q },
        el('td', {}, q),
        el('td', { 'data-field': 'waiting' }, v.waiting),
        el('td', {}, v.waiting ? fmtSeconds(v.longest) : '–'),
        el('td', {}, fmtSeconds(m.aht)),
        el('td', {}, fmtSeconds(m.att)),
        el('td', {}, m.handled || 0));
    }),
  );
  barChart($('channel-chart'), [...byMedia].sort().map(([m, n]) => [m, n]));
  $('open-sessions').textContent = state.sessions.size;
  let handled = 0;
  let talk = 0;
  let handle = 0;
  for (const row of latest.values()) {
    handled += row.handled || 0;
    talk += row.talk_time || 0;
    handle += row.handle_time || 0;
  }
  $('handled').textContent = handled;
  $('aht').textContent = handled ? fmtSeconds(handle / handled) : '–';
  $('att').textContent = handled ? fmtSeconds(talk / handled) : '–';
  return waitingTotal;
}

async function loadSessions() {
  state.sessions.clear();
  let cursor = null;
  do {
    const q = cursor ? `&cursor=${encodeURIComponent(cursor)}` : '';
    const page = await api(`/v1/sessions?open=true&limit=500${q}`, { token: state.key });
    for (const s of page.sessions) state.sessions.set(s.id, s);
    cursor = page.next_cursor;
  } while (cursor);
}

async function loadMetrics() {
  const page = await api('/v1/metrics/queues?interval=86400', { token: state.key });
  state.metrics = page.rows;
}

function startSessions() {
  state.events = new LiveSocket(httpWsUrl('/v1/events', state.key), (event) => {
    const s = event.session;
    if (s.closed_at !== null) state.sessions.delete(s.id);
    else state.sessions.set(s.id, s);
    if (event.type === 'session_closed' || event.type === 'channel_changed') loadMetrics().then(renderQueues, () => {});
    renderQueues();
  }, { onOpen: () => loadSessions().then(renderQueues, () => {}) });
}

async function open(key) {
  state.key = key;
  await api('/v1/presence', { token: key }); // 401/403 now rather than a silent board
  await loadSessions();
  await loadMetrics().catch(() => {});
  sessionStorage.setItem('ucgate.wallboard.key', key);
  $('key-view').hidden = true;
  $('board').hidden = false;
  startPresence();
  startSessions();
  renderQueues();
  setInterval(() => {
    state.waitingHistory.push(renderQueues());
    if (state.waitingHistory.length > 150) state.waitingHistory.shift();
    sparkline($('waiting-chart'), state.waitingHistory);
    $('clock').textContent = new Date().toLocaleTimeString();
  }, 2000);
  setInterval(() => loadMetrics().then(renderQueues, () => {}), 15000);
}

$('key-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  $('key-error').textContent = '';
  try {
    await open($('key').value.trim());
  } catch (err) {
    $('key-error').textContent = err.message;
  }
});

const given = new URLSearchParams(location.search).get('access_token');
const saved = given || sessionStorage.getItem('ucgate.wallboard.key');
if (given) history.replaceState(null, '', location.pathname); // keep the key out of history
if (saved) open(saved).catch((err) => ($('key-error').textContent = err.message));

window.ucgateWallboard = {
  state: () => ({
    agents: Object.fromEntries([...state.agents.values()].map((d) => [d.agent, d.status])),
    openSessions: state.sessions.size,
    live: $('live').textContent,
  }),
};
