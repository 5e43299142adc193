// The /map page of weir-reducer: draws /api/v1/map (the Observer API's
// GetServiceMapResponse as JSON) as workloads grouped by namespace and edges
// weighted by bytes. Plain JavaScript and SVG, no dependencies.
'use strict';

const API = 'api/v1/map'; // relative, so that the page works behind a path prefix
const METRICS = 'metrics';
const SVGNS = 'http://www.w3.org/2000/svg';

// Prometheus names of the edge values the page reads from Edge.values.
const V = {
  retransmits: 'weir_tcp_retransmits_total',
  resets: 'weir_tcp_resets_total',
  refused: 'weir_tcp_connections_refused_total',
  synTimeouts: 'weir_tcp_syn_timeouts_total',
  udpBytes: 'weir_udp_bytes_total',
  udpPackets: 'weir_udp_packets_total',
  udpDrops: 'weir_udp_drops_total',
  dnsTimeouts: 'weir_dns_timeouts_total',
};
const RTT = 'weir_tcp_rtt_seconds'; // a histogram: on /metrics, not in the map

// uint64 fields arrive as JSON strings (protojson).
const num = (v) => Number(v || 0);

// BEGIN api contract: every field of the /api/v1/map document the page reads.
function normalize(doc) {
  const m = doc.map || {};
  const nodes = (m.nodes || []).map((n) => ({
    id: n.id,
    name: n.workload.name,
    kind: n.workload.kind,
    namespace: n.workload.namespace,
    zone: n.workload.zone,
    node: n.workload.node,
    pod: n.workload.pod,
  }));
  const edges = (m.edges || []).map((e) => ({
    source: e.source_id,
    target: e.destination_id,
    tcpBytes: num(e.tcp_bytes),
    tcpPackets: num(e.tcp_packets),
    opened: num(e.tcp_connections_opened),
    active: num(e.tcp_active_connections),
    values: e.values || {},
  }));
  return { time: m.time, level: m.level, nodes, edges };
}
// END api contract

const $ = (id) => document.getElementById(id);
const svg = $('map');
const view = $('viewport');
const layers = { groups: $('groups'), edges: $('edges'), nodes: $('nodes') };

const state = {
  nodes: new Map(), // id → node (with x, y, vx, vy, and the DOM element)
  edges: new Map(), // "src→dst" → edge
  level: '',
  time: '',
  fetchedAt: 0,
  fetches: 0,
  errors: 0,
  rtt: new Map(), // "src→dst" → {sum, count}
  selected: null, // {type: 'edge'|'node', key}
  zoom: { k: 1, x: 0, y: 0 },
  userView: false, // the user zoomed or panned: no more fitting by itself
  alpha: 0,
  timer: 0,
  groups: new Map(), // namespace → its place on the grid
  spacing: 200,
};
window.weirMap = state; // for the tests and the curious

// ---------- fetching ----------

async function refresh() {
  clearTimeout(state.timer);
  try {
    const res = await fetch(API, { cache: 'no-store', headers: { Accept: 'application/json' } });
    if (!res.ok) throw new Error(`${API}: HTTP ${res.status}`);
    const doc = normalize(await res.json());
    if ($('rtt').checked && doc.edges.length <= 2000) {
      await fetchRTT(doc.level).catch(() => state.rtt.clear());
    } else {
      state.rtt.clear();
    }
    update(doc);
    state.fetches++;
    setStatus(`${doc.nodes.length} workloads, ${doc.edges.length} edges · level ${doc.level} · ${new Date(doc.time || Date.now()).toLocaleTimeString()}`, false);
  } catch (err) {
    state.errors++;
    setStatus(`cannot read the map: ${err.message}`, true);
  }
  const every = Number($('refresh').value);
  if (every > 0) state.timer = setTimeout(refresh, every * 1000);
}

function setStatus(text, error) {
  const s = $('status');
  s.textContent = text;
  s.classList.toggle('error', error);
}

// fetchRTT reads the mean RTT of each edge from the histogram's _sum and
// _count on /metrics (the map carries counters and gauges only).
async function fetchRTT(level) {
  const res = await fetch(METRICS, { cache: 'no-store', headers: { Accept: 'text/plain' } });
  if (!res.ok) throw new Error(`${METRICS}: HTTP ${res.status}`);
  const text = await res.text();
  const rtt = new Map();
  const re = /([a-z_]+)="((?:[^"\\]|\\.)*)"/g;
  for (const line of text.split('\n')) {
    if (!line.startsWith(RTT + '_sum{') && !line.startsWith(RTT + '_count{')) continue;
    const brace = line.lastIndexOf('}');
    const labels = {};
    for (const m of line.slice(line.indexOf('{') + 1, brace).matchAll(re)) {
      labels[m[1]] = m[2].replace(/\\(.)/g, (_, c) => (c === 'n' ? '\n' : c));
    }
    const key = endID('src', labels, level) + '→' + endID('dst', labels, level);
    const v = Number(line.slice(brace + 1).trim().split(' ')[0]);
    const r = rtt.get(key) || { sum: 0, count: 0 };
    if (line.startsWith(RTT + '_sum{')) r.sum += v; else r.count += v;
    rtt.set(key, r);
  }
  state.rtt = rtt;
}

// endID is servicemap.ID of one end from its metric labels.
function endID(side, l, level) {
  let id = `${l[side + '_kind'] || ''}/${l[side + '_namespace'] || ''}/${l[side + '_workload'] || ''}`;
  if (level === 'node' || level === 'pod') id += '/' + (l[side + '_node'] || '');
  if (level === 'pod') id += '/' + (l[side + '_pod'] || '');
  if (level === 'process') id += '/' + (l[side + '_process'] || '');
  return id;
}

// ---------- the model ----------

function update(doc) {
  const now = performance.now();
  const dt = state.fetchedAt ? (now - state.fetchedAt) / 1000 : 0;
  state.fetchedAt = now;
  state.level = doc.level;
  state.time = doc.time;
  const seenN = new Set();
  let added = 0, changed = 0;
  for (const n of doc.nodes) {
    seenN.add(n.id);
    const old = state.nodes.get(n.id);
    if (old) {
      Object.assign(old, n);
    } else {
      const c = groupCenter(n.namespace);
      state.nodes.set(n.id, { ...n, x: c.x + (Math.random() - 0.5) * 80, y: c.y + (Math.random() - 0.5) * 80, vx: 0, vy: 0, bytes: 0 });
      added++;
    }
  }
  for (const [id, n] of state.nodes) {
    if (!seenN.has(id)) {
      n.el?.remove();
      state.nodes.delete(id);
      changed++;
    }
  }
  const seenE = new Set();
  const merged = new Map();
  for (const e of doc.edges) {
    const key = e.source + '→' + e.target;
    const m = merged.get(key);
    if (!m) { merged.set(key, e); continue; }
    // The same pair in two zones: one line.
    m.tcpBytes += e.tcpBytes; m.tcpPackets += e.tcpPackets; m.opened += e.opened; m.active += e.active;
    const values = { ...m.values };
    for (const [k, v] of Object.entries(e.values)) values[k] = String(num(values[k]) + num(v));
    m.values = values;
  }
  for (const [key, e] of merged) {
    seenE.add(key);
    const old = state.edges.get(key);
    if (!old) changed++;
    const udp = num(e.values[V.udpBytes]);
    const bytes = e.tcpBytes + udp;
    const rate = old && dt > 0 ? Math.max(0, bytes - old.bytes) / dt : null;
    const next = { ...(old || {}), ...e, key, udpBytes: udp, bytes, rate };
    const r = state.rtt.get(key);
    next.rtt = r && r.count > 0 ? r.sum / r.count : null;
    next.rttCount = r ? r.count : 0;
    state.edges.set(key, next);
  }
  for (const [key, e] of state.edges) {
    if (!seenE.has(key)) {
      e.el?.remove();
      state.edges.delete(key);
      changed++;
    }
  }
  for (const n of state.nodes.values()) n.bytes = 0;
  for (const e of state.edges.values()) {
    const s = state.nodes.get(e.source), t = state.nodes.get(e.target);
    if (s) s.bytes += e.bytes;
    if (t) t.bytes += e.bytes;
  }
  fillSelect($('ns'), [...new Set([...state.nodes.values()].map((n) => n.namespace || NONE))]);
  fillSelect($('kind'), [...new Set([...state.nodes.values()].map((n) => n.kind))]);
  applyFilter();
  setSpacing();
  if (added > 0) state.alpha = 1;
  else if (changed > 0) state.alpha = Math.max(state.alpha, 0.3);
  if (added > 0 && state.fetches === 0) {
    for (let i = 0; i < 150 && visibleNodes().length <= 400; i++) tick();
    fit();
  }
  render();
  showSelected();
  kick();
}

// NONE stands for the empty namespace in the filter (no namespace name has
// parentheses).
const NONE = '(none)';

function fillSelect(sel, values) {
  const cur = sel.value;
  values.sort();
  const want = ['', ...values];
  const have = [...sel.options].map((o) => o.value);
  if (want.length === have.length && want.every((v, i) => v === have[i])) return;
  sel.replaceChildren(new Option('all', ''), ...values.map((v) => new Option(v, v)));
  sel.value = values.includes(cur) ? cur : '';
}

// ---------- filters ----------

function applyFilter() {
  const ns = $('ns').value, kind = $('kind').value, q = $('q').value.trim().toLowerCase();
  const ext = $('ext').checked, top = Number($('top').value);
  const nsMatch = (n) => ns === '' || (n.namespace || NONE) === ns;
  const match = (n) => nsMatch(n) && (kind === '' || n.kind === kind) && (q === '' || n.name.toLowerCase().includes(q));
  let edges = [...state.edges.values()].filter((e) => {
    const s = state.nodes.get(e.source), t = state.nodes.get(e.target);
    if (!s || !t) return false;
    if (!ext && (s.kind === 'external' || t.kind === 'external')) return false;
    return match(s) || match(t);
  });
  edges.sort((a, b) => b.bytes - a.bytes);
  if (top > 0) edges = edges.slice(0, top);
  const shown = new Set();
  for (const e of edges) { shown.add(e.source); shown.add(e.target); }
  // A workload that matches and has no drawn edge (all filtered away) still shows.
  for (const n of state.nodes.values()) if (match(n) && (ext || n.kind !== 'external') && edges.length === 0) shown.add(n.id);
  for (const e of state.edges.values()) e.visible = false;
  for (const e of edges) e.visible = true;
  for (const n of state.nodes.values()) n.visible = shown.has(n.id);
}

const visibleNodes = () => [...state.nodes.values()].filter((n) => n.visible);
const visibleEdges = () => [...state.edges.values()].filter((e) => e.visible);

// ---------- layout: a force layout pulled towards one point per namespace ----------

function groupCenter(ns) {
  const key = ns || '';
  let i = state.groups.get(key);
  if (i === undefined) {
    i = state.groups.size;
    state.groups.set(key, i);
  }
  // The namespaces sit on a grid, spaced for the largest one.
  const cols = Math.ceil(Math.sqrt(state.groups.size));
  return { x: (i % cols) * state.spacing, y: Math.floor(i / cols) * state.spacing };
}

// setSpacing spaces the namespaces' points for the largest namespace.
function setSpacing() {
  const count = new Map();
  for (const n of state.nodes.values()) {
    if (n.visible) count.set(n.namespace || '', (count.get(n.namespace || '') || 0) + 1);
  }
  state.spacing = 100 + 60 * Math.sqrt(Math.max(1, ...count.values()));
}

function tick() {
  const nodes = visibleNodes();
  const edges = visibleEdges();
  const alpha = Math.max(state.alpha, 0.02);
  const n = nodes.length;
  // Repulsion between every pair within reach (n² is fine for a few hundred).
  for (let i = 0; i < n; i++) {
    const a = nodes[i];
    for (let j = i + 1; j < n; j++) {
      const b = nodes[j];
      let dx = a.x - b.x, dy = a.y - b.y;
      let d2 = dx * dx + dy * dy;
      if (d2 > 40000) continue;
      if (d2 < 1) { dx = Math.random() - 0.5; dy = Math.random() - 0.5; d2 = 1; }
      const f = (500 * alpha) / d2;
      a.vx += dx * f; a.vy += dy * f; b.vx -= dx * f; b.vy -= dy * f;
    }
  }
  // Springs along the edges.
  for (const e of edges) {
    const s = state.nodes.get(e.source), t = state.nodes.get(e.target);
    const dx = t.x - s.x, dy = t.y - s.y;
    const d = Math.sqrt(dx * dx + dy * dy) || 1;
    const same = (s.namespace || '') === (t.namespace || '');
    const f = ((d - (same ? 60 : 200)) / d) * (same ? 0.04 : 0.004) * alpha;
    s.vx += dx * f; s.vy += dy * f; t.vx -= dx * f; t.vy -= dy * f;
  }
  // Each workload is pulled to its namespace's point.
  for (const a of nodes) {
    const c = groupCenter(a.namespace);
    a.vx += (c.x - a.x) * 0.08 * alpha;
    a.vy += (c.y - a.y) * 0.08 * alpha;
  }
  for (const a of nodes) {
    if (a.fx != null) { a.x = a.fx; a.y = a.fy; a.vx = a.vy = 0; continue; }
    a.vx *= 0.6; a.vy *= 0.6;
    a.x += Math.max(-30, Math.min(30, a.vx));
    a.y += Math.max(-30, Math.min(30, a.vy));
  }
  state.alpha *= 0.985;
}

let frame = 0;
function kick() {
  if (frame) return;
  const step = () => {
    const t0 = performance.now();
    do tick(); while (performance.now() - t0 < 8 && state.alpha > 0.02);
    positions();
    if (state.alpha > 0.02) {
      frame = requestAnimationFrame(step);
    } else {
      frame = 0;
      if (!state.userView) fit(); // the layout settled: show all of it
    }
  };
  frame = requestAnimationFrame(step);
}

// ---------- drawing ----------

const fmtBytes = (b) => {
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let i = 0;
  while (b >= 1024 && i < u.length - 1) { b /= 1024; i++; }
  return `${i === 0 ? b : b.toFixed(b < 10 ? 2 : 1)} ${u[i]}`;
};
const fmtNum = (v) => Number(v).toLocaleString('en-US');
const fmtDur = (s) => (s < 1e-3 ? `${(s * 1e6).toFixed(0)} µs` : s < 1 ? `${(s * 1e3).toFixed(2)} ms` : `${s.toFixed(2)} s`);

function edgeClass(e) {
  const resets = num(e.values[V.resets]) + num(e.values[V.refused]);
  const retrans = num(e.values[V.retransmits]);
  if (resets > 0) return 'reset';
  if (retrans > 0 && e.tcpPackets > 0 && retrans / e.tcpPackets > 0.01) return 'bad';
  if (retrans > 0) return 'warn';
  return 'ok';
}

function el(name, attrs) {
  const x = document.createElementNS(SVGNS, name);
  for (const [k, v] of Object.entries(attrs || {})) x.setAttribute(k, v);
  return x;
}

function render() {
  const edges = visibleEdges();
  const maxBytes = Math.max(1, ...edges.map((e) => e.bytes));
  const lmax = Math.log1p(maxBytes);
  for (const e of state.edges.values()) {
    if (!e.visible) { e.el?.remove(); e.el = null; continue; }
    if (!e.el) {
      e.el = el('path', { 'marker-end': 'url(#arrow)' });
      e.el.addEventListener('mouseenter', (ev) => tip(ev, edgeDetails(e)));
      e.el.addEventListener('mousemove', moveTip);
      e.el.addEventListener('mouseleave', hideTip);
      e.el.addEventListener('click', (ev) => { ev.stopPropagation(); select('edge', e.key); });
    }
    e.el.setAttribute('class', `edge ${edgeClass(e)}` + (state.selected?.key === e.key ? ' selected' : ''));
    e.el.setAttribute('stroke-width', (1 + 7 * Math.log1p(e.bytes) / lmax).toFixed(2));
    e.el.dataset.source = e.source;
    e.el.dataset.target = e.target;
    e.el.dataset.bytes = String(e.bytes);
    e.el.dataset.tcpBytes = String(e.tcpBytes);
    if (!e.el.isConnected) layers.edges.append(e.el);
  }
  const maxNode = Math.max(1, ...visibleNodes().map((n) => n.bytes));
  const byBytes = visibleNodes().sort((a, b) => b.bytes - a.bytes);
  const labelled = new Set(byBytes.slice(0, 60).map((n) => n.id));
  for (const n of state.nodes.values()) {
    if (!n.visible) { n.el?.remove(); n.el = null; continue; }
    if (!n.el) {
      n.el = el('g');
      n.el.append(el('circle'), el('text', { dy: '0.32em' }));
      n.el.addEventListener('mouseenter', (ev) => tip(ev, nodeDetails(n)));
      n.el.addEventListener('mousemove', moveTip);
      n.el.addEventListener('mouseleave', hideTip);
      n.el.addEventListener('pointerdown', (ev) => dragNode(ev, n));
      n.el.addEventListener('dblclick', (ev) => { ev.stopPropagation(); n.fx = n.fy = null; n.el.classList.remove('pinned'); state.alpha = 0.3; kick(); });
    }
    const r = 5 + 11 * Math.sqrt(Math.log1p(n.bytes) / Math.log1p(maxNode));
    n.r = r;
    n.el.setAttribute('class', 'node' + (n.fx != null ? ' pinned' : '') + (state.selected?.key === n.id ? ' selected' : ''));
    n.el.dataset.id = n.id;
    n.el.dataset.name = n.name;
    n.el.dataset.kind = n.kind;
    const c = n.el.firstChild;
    c.setAttribute('r', r.toFixed(1));
    c.setAttribute('class', 'k-' + (/^[a-z]+$/.test(n.kind) ? n.kind : 'other'));
    const t = n.el.lastChild;
    t.textContent = labelled.has(n.id) || state.zoom.k > 1.6 ? n.name : '';
    t.setAttribute('x', (r + 3).toFixed(1));
    if (!n.el.isConnected) layers.nodes.append(n.el);
  }
  positions();
}

function positions() {
  for (const e of state.edges.values()) {
    if (!e.el) continue;
    const s = state.nodes.get(e.source), t = state.nodes.get(e.target);
    if (!s || !t) continue;
    const dx = t.x - s.x, dy = t.y - s.y;
    const d = Math.sqrt(dx * dx + dy * dy) || 1;
    if (s === t) {
      e.el.setAttribute('d', `M${s.x},${s.y - s.r} c 30,-40 40,20 ${s.r},${s.r}`);
      continue;
    }
    // A slight curve, so that the two directions of a pair do not overlap.
    const ux = dx / d, uy = dy / d;
    const sx = s.x + ux * s.r, sy = s.y + uy * s.r;
    const tx = t.x - ux * (t.r + 2), ty = t.y - uy * (t.r + 2);
    const mx = (sx + tx) / 2 - uy * d * 0.12, my = (sy + ty) / 2 + ux * d * 0.12;
    e.el.setAttribute('d', `M${sx.toFixed(1)},${sy.toFixed(1)} Q${mx.toFixed(1)},${my.toFixed(1)} ${tx.toFixed(1)},${ty.toFixed(1)}`);
  }
  for (const n of state.nodes.values()) {
    if (n.el) n.el.setAttribute('transform', `translate(${n.x.toFixed(1)},${n.y.toFixed(1)})`);
  }
  drawGroups();
}

function drawGroups() {
  const boxes = new Map();
  for (const n of visibleNodes()) {
    const k = n.namespace || '';
    const b = boxes.get(k) || { x0: Infinity, y0: Infinity, x1: -Infinity, y1: -Infinity, n: 0 };
    b.x0 = Math.min(b.x0, n.x - n.r); b.y0 = Math.min(b.y0, n.y - n.r);
    b.x1 = Math.max(b.x1, n.x + n.r); b.y1 = Math.max(b.y1, n.y + n.r);
    b.n++;
    boxes.set(k, b);
  }
  const have = new Map([...layers.groups.children].map((g) => [g.dataset.ns, g]));
  for (const [k, b] of boxes) {
    let g = have.get(k);
    have.delete(k);
    if (!g) {
      g = el('g', { class: 'group' });
      g.dataset.ns = k;
      g.append(el('rect', { rx: 12 }), el('text'));
      layers.groups.append(g);
    }
    const pad = 18;
    const r = g.firstChild;
    r.setAttribute('x', (b.x0 - pad).toFixed(1));
    r.setAttribute('y', (b.y0 - pad).toFixed(1));
    r.setAttribute('width', (b.x1 - b.x0 + 2 * pad).toFixed(1));
    r.setAttribute('height', (b.y1 - b.y0 + 2 * pad).toFixed(1));
    const t = g.lastChild;
    t.textContent = k ? `namespace ${k}` : 'no namespace';
    t.setAttribute('x', (b.x0 - pad + 8).toFixed(1));
    t.setAttribute('y', (b.y0 - pad - 4).toFixed(1));
  }
  for (const g of have.values()) g.remove();
}

// ---------- details ----------

function rows(pairs) {
  const table = document.createElement('table');
  for (const [k, v] of pairs) {
    if (v === null || v === undefined) continue;
    const tr = table.insertRow();
    tr.insertCell().textContent = k;
    tr.insertCell().textContent = v;
  }
  return table;
}

function workloadLabel(n) {
  if (!n) return '?';
  return `${n.namespace ? n.namespace + '/' : ''}${n.name} [${n.kind}]`;
}

function edgeDetails(e) {
  const s = state.nodes.get(e.source), t = state.nodes.get(e.target);
  const head = document.createElement('div');
  const title = document.createElement('div');
  title.innerHTML = '<b></b> → <b></b>';
  title.children[0].textContent = workloadLabel(s);
  title.children[1].textContent = workloadLabel(t);
  head.append(title);
  const pairs = [
    ['TCP bytes', fmtBytes(e.tcpBytes)],
    ['rate', e.rate === null ? null : fmtBytes(e.rate) + '/s'],
    ['TCP segments', fmtNum(e.tcpPackets)],
    ['connections opened', fmtNum(e.opened)],
    ['active connections', fmtNum(e.active)],
    ['retransmits', fmtNum(num(e.values[V.retransmits]))],
    ['resets', fmtNum(num(e.values[V.resets]))],
    ['refused connects', e.values[V.refused] ? fmtNum(num(e.values[V.refused])) : null],
    ['SYN timeouts', e.values[V.synTimeouts] ? fmtNum(num(e.values[V.synTimeouts])) : null],
    ['RTT (mean)', e.rtt === null ? null : `${fmtDur(e.rtt)} (${fmtNum(e.rttCount)} obs.)`],
    ['UDP bytes', e.values[V.udpBytes] ? fmtBytes(num(e.values[V.udpBytes])) : null],
    ['UDP datagrams', e.values[V.udpPackets] ? fmtNum(num(e.values[V.udpPackets])) : null],
    ['UDP drops', e.values[V.udpDrops] ? fmtNum(num(e.values[V.udpDrops])) : null],
    ['DNS timeouts', e.values[V.dnsTimeouts] ? fmtNum(num(e.values[V.dnsTimeouts])) : null],
  ];
  head.append(rows(pairs));
  return head;
}

function nodeDetails(n) {
  const div = document.createElement('div');
  const b = document.createElement('b');
  b.textContent = workloadLabel(n);
  div.append(b);
  let out = 0, inb = 0, peers = 0;
  for (const e of state.edges.values()) {
    if (e.source === n.id) { out += e.bytes; peers++; }
    if (e.target === n.id) { inb += e.bytes; peers++; }
  }
  div.append(rows([
    ['id', n.id], ['zone', n.zone || null], ['node', n.node || null], ['pod', n.pod || null],
    ['bytes sent', fmtBytes(out)], ['bytes received', fmtBytes(inb)], ['edges', fmtNum(peers)],
  ]));
  return div;
}

function select(type, key) {
  state.selected = { type, key };
  render();
  showSelected();
}

function showSelected() {
  const body = $('detail-body');
  const s = state.selected;
  if (!s) { body.replaceChildren(); return; }
  const obj = s.type === 'edge' ? state.edges.get(s.key) : state.nodes.get(s.key);
  if (!obj) { body.replaceChildren(document.createTextNode('gone from the map')); return; }
  const d = s.type === 'edge' ? edgeDetails(obj) : nodeDetails(obj);
  if (s.type === 'edge') {
    // Every value the reducer has for the edge.
    const h = document.createElement('h2');
    h.textContent = 'all values';
    d.append(h, rows(Object.entries(obj.values).sort().map(([k, v]) => [k, fmtNum(num(v))])));
  }
  body.replaceChildren(d);
}

const tipEl = $('tip');
function tip(ev, content) {
  tipEl.replaceChildren(content);
  tipEl.hidden = false;
  moveTip(ev);
}
function moveTip(ev) {
  const x = Math.min(ev.clientX + 14, window.innerWidth - tipEl.offsetWidth - 8);
  const y = Math.min(ev.clientY + 14, window.innerHeight - tipEl.offsetHeight - 8);
  tipEl.style.left = x + 'px';
  tipEl.style.top = y + 'px';
}
function hideTip() { tipEl.hidden = true; }

// ---------- zoom, pan, drag ----------

function applyZoom() {
  const z = state.zoom;
  view.setAttribute('transform', `translate(${z.x.toFixed(1)},${z.y.toFixed(1)}) scale(${z.k.toFixed(4)})`);
}

function fit() {
  const nodes = visibleNodes();
  if (nodes.length === 0) return;
  let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
  for (const n of nodes) {
    x0 = Math.min(x0, n.x); y0 = Math.min(y0, n.y); x1 = Math.max(x1, n.x); y1 = Math.max(y1, n.y);
  }
  // Room for the circles, their labels and the namespace boxes.
  x0 -= 40; y0 -= 50; x1 += 140; y1 += 40;
  const w = svg.clientWidth || 800, h = svg.clientHeight || 600, pad = 10;
  const k = Math.min(1.25, (w - 2 * pad) / Math.max(1, x1 - x0), (h - 2 * pad) / Math.max(1, y1 - y0));
  state.zoom = { k, x: w / 2 - k * (x0 + x1) / 2, y: h / 2 - k * (y0 + y1) / 2 };
  applyZoom();
}

function toModel(ev) {
  const r = svg.getBoundingClientRect();
  return { x: (ev.clientX - r.left - state.zoom.x) / state.zoom.k, y: (ev.clientY - r.top - state.zoom.y) / state.zoom.k };
}

svg.addEventListener('wheel', (ev) => {
  ev.preventDefault();
  const r = svg.getBoundingClientRect();
  const px = ev.clientX - r.left, py = ev.clientY - r.top;
  const z = state.zoom;
  const k = Math.max(0.05, Math.min(8, z.k * Math.exp(-ev.deltaY * 0.0015)));
  z.x = px - (px - z.x) * (k / z.k);
  z.y = py - (py - z.y) * (k / z.k);
  const relabel = (z.k > 1.6) !== (k > 1.6);
  state.userView = true;
  z.k = k;
  applyZoom();
  if (relabel) render();
}, { passive: false });

svg.addEventListener('pointerdown', (ev) => {
  if (ev.target !== svg && !layers.groups.contains(ev.target)) return;
  const start = { x: ev.clientX, y: ev.clientY, zx: state.zoom.x, zy: state.zoom.y };
  let moved = false;
  svg.classList.add('panning');
  svg.setPointerCapture(ev.pointerId);
  const move = (e) => {
    moved = moved || Math.abs(e.clientX - start.x) + Math.abs(e.clientY - start.y) > 3;
    state.userView = true;
    state.zoom.x = start.zx + e.clientX - start.x;
    state.zoom.y = start.zy + e.clientY - start.y;
    applyZoom();
  };
  const up = () => {
    svg.classList.remove('panning');
    svg.removeEventListener('pointermove', move);
    svg.removeEventListener('pointerup', up);
    if (!moved && state.selected) { state.selected = null; render(); showSelected(); }
  };
  svg.addEventListener('pointermove', move);
  svg.addEventListener('pointerup', up);
});

function dragNode(ev, n) {
  ev.stopPropagation();
  const start = { x: ev.clientX, y: ev.clientY };
  let moved = false;
  n.el.setPointerCapture(ev.pointerId);
  const move = (e) => {
    moved = moved || Math.abs(e.clientX - start.x) + Math.abs(e.clientY - start.y) > 3;
    if (!moved) return;
    const p = toModel(e);
    n.fx = n.x = p.x;
    n.fy = n.y = p.y;
    hideTip();
    positions();
  };
  const up = () => {
    n.el.removeEventListener('pointermove', move);
    n.el.removeEventListener('pointerup', up);
    if (moved) { n.el.classList.add('pinned'); state.alpha = Math.max(state.alpha, 0.2); kick(); } else select('node', n.id);
  };
  n.el.addEventListener('pointermove', move);
  n.el.addEventListener('pointerup', up);
}

// ---------- controls ----------

for (const id of ['ns', 'kind', 'ext', 'top']) {
  $(id).addEventListener('change', () => { applyFilter(); setSpacing(); render(); state.alpha = Math.max(state.alpha, 0.5); kick(); });
}
$('q').addEventListener('input', () => { applyFilter(); render(); state.alpha = Math.max(state.alpha, 0.3); kick(); });
$('refresh').addEventListener('change', refresh);
$('rtt').addEventListener('change', refresh);
$('fit').addEventListener('click', () => { state.userView = false; fit(); });
document.addEventListener('visibilitychange', () => { if (!document.hidden && Number($('refresh').value) > 0) refresh(); });

applyZoom();
refresh();
