// The Groundwork console: read-only views of the datacenter that follow the API's watch
// streams. One list and one watch per kind for the whole page (plus, on a Node's page, its
// Events and its log); every update changes only the drawing of the object that changed.
// Plain ES modules, no build step: the browser runs what the server embeds (docs/decisions.md).

const GROUP = '/apis/groundwork.dev/v1alpha1';
const KINDS = ['datacenters', 'racks', 'nodes', 'servicestacks', 'gitsources'];
const U_PX = 14;          // one rack unit, in pixels
const RACK_W = 230;

const $ = (sel, root = document) => root.querySelector(sel);
const esc = (s) => String(s ?? '').replace(/[&<>"']/g, (c) => (
  { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));

// Objects by kind and name, and which kinds the server does not serve (404: older servers).
const store = Object.fromEntries(KINDS.map((k) => [k, new Map()]));
const missing = new Set();
const connected = new Set();
let token = sessionStorage.getItem('groundwork-token') || '';
let signedIn = false;
const streams = [];  // AbortControllers of the page-wide watches
let pageStreams = []; // ... and of the current page's own (Events, log)

// ---- API -------------------------------------------------------------------------------

class Unauthorized extends Error {}

async function api(path, init = {}) {
  const headers = { Accept: 'application/json', ...(init.headers || {}) };
  if (token) headers.Authorization = `Bearer ${token}`;
  const r = await fetch(path, { ...init, headers });
  if (r.status === 401) {
    signOut('The server refused the token (401): sign in again.');
    throw new Unauthorized();
  }
  return r;
}

// Lists a kind, then follows its watch from the list's resourceVersion, forever: a broken
// stream is resumed from the last version seen, a 410 (too old) starts from a new list.
async function follow(kind, abort) {
  let rv = '';
  let backoff = 500;
  while (!abort.signal.aborted) {
    try {
      if (!rv) {
        const r = await api(`${GROUP}/${kind}`, { signal: abort.signal });
        if (r.status === 404) { missing.add(kind); changed(kind); return; }
        if (!r.ok) throw new Error(`${kind}: ${r.status}`);
        const list = await r.json();
        store[kind] = new Map(list.items.map((o) => [o.metadata.name, o]));
        rv = list.metadata.resourceVersion;
        changed(kind);
      }
      const r = await api(
        `${GROUP}/${kind}?watch=1&allowWatchBookmarks=true&resourceVersion=${encodeURIComponent(rv)}`,
        { signal: abort.signal });
      if (!r.ok) throw new Error(`${kind} watch: ${r.status}`);
      connected.add(kind); live();
      backoff = 500;
      for await (const ev of lines(r.body)) {
        if (ev.type === 'ERROR') { rv = ''; break; }
        const o = ev.object;
        if (o?.metadata?.resourceVersion) rv = o.metadata.resourceVersion;
        if (ev.type === 'BOOKMARK') continue;
        if (ev.type === 'DELETED') store[kind].delete(o.metadata.name);
        else store[kind].set(o.metadata.name, o);
        changed(kind, o, ev.type);
      }
    } catch (e) {
      if (e instanceof Unauthorized || abort.signal.aborted) return;
    }
    connected.delete(kind); live();
    await new Promise((res) => setTimeout(res, backoff));
    backoff = Math.min(backoff * 2, 10000);
  }
}

// The JSON objects of a watch stream, one per line.
async function* lines(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value;
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i).trim();
      buf = buf.slice(i + 1);
      if (line) yield JSON.parse(line);
    }
  }
}

function live() {
  const el = $('#live');
  const want = KINDS.filter((k) => !missing.has(k));
  const ok = want.every((k) => connected.has(k));
  el.classList.toggle('ok', ok);
  el.title = ok ? 'live: following every kind' : `reconnecting: ${want.filter((k) => !connected.has(k)).join(', ')}`;
}

// ---- Rendering: batched per animation frame ---------------------------------------------

const dirty = { all: false, racks: new Set() };
let frame = 0;

function changed(kind, obj, type) {
  const view = route().view;
  if (view === 'datacenter') {
    if (kind === 'nodes' && obj && type === 'MODIFIED' && patchNode(obj)) return;
    if (kind === 'nodes' && obj) {
      const old = $(`[data-node="${cssEsc(obj.metadata.name)}"]`);
      if (old) dirty.racks.add(old.closest('[data-rack]')?.dataset.rack);
      if (obj.spec?.rack?.name) dirty.racks.add(obj.spec.rack.name);
      else dirty.all = true;
    } else if (kind === 'racks' && obj && type === 'MODIFIED') {
      dirty.racks.add(obj.metadata.name);
    } else if (kind !== 'servicestacks' && kind !== 'gitsources') {
      dirty.all = true;
    }
  } else if (view === 'node') {
    if (kind === 'nodes' && (!obj || obj.metadata.name === route().name)) dirty.all = true;
  } else if (view === 'services') {
    if (kind === 'servicestacks' || kind === 'gitsources') dirty.all = true;
  }
  if (!frame) frame = requestAnimationFrame(flush);
}

function flush() {
  frame = 0;
  if (!signedIn) return;
  if (dirty.all) {
    dirty.all = false; dirty.racks.clear();
    render(false);
    return;
  }
  for (const name of dirty.racks) {
    const card = $(`[data-rack="${cssEsc(name)}"]`);
    const rack = store.racks.get(name);
    if (card && rack) card.outerHTML = rackCard(rack);
    else { dirty.racks.clear(); render(false); return; }
  }
  dirty.racks.clear();
}

const cssEsc = (s) => (window.CSS && CSS.escape ? CSS.escape(s) : s);

function route() {
  const h = location.hash.replace(/^#\/?/, '');
  if (h.startsWith('node/')) return { view: 'node', name: decodeURIComponent(h.slice(5)) };
  if (h === 'services') return { view: 'services' };
  return { view: 'datacenter' };
}

// `navigated`: a new page (its own streams start again); else the same page's data changed.
function render(navigated = true) {
  const r = route();
  if (!navigated && r.view === 'node' && $(`[data-node-page="${cssEsc(r.name)}"]`) && store.nodes.has(r.name)) {
    $('#node-info').innerHTML = nodeInfo(r.name);
    return;
  }
  for (const s of pageStreams) s.abort();
  pageStreams = [];
  for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('active', a.dataset.view === r.view);
  const view = $('#view');
  if (r.view === 'node') nodePage(view, r.name);
  else if (r.view === 'services') view.innerHTML = servicesPage();
  else view.innerHTML = datacenterPage();
}

// ---- Datacenter view -------------------------------------------------------------------

const phaseOf = (n) => n.status?.phase || 'none';
const nodesByRack = () => {
  const m = new Map();
  for (const n of store.nodes.values()) {
    const r = n.spec?.rack?.name || '';
    if (!m.has(r)) m.set(r, []);
    m.get(r).push(n);
  }
  return m;
};

function datacenterPage() {
  const byRack = nodesByRack();
  const racks = [...store.racks.values()];
  const dcs = [...store.datacenters.values()];
  let html = legend();
  const shown = new Set();
  for (const dc of dcs) {
    html += `<section class="dc" data-datacenter="${esc(dc.metadata.name)}"><h2>${esc(dc.spec?.displayName || dc.metadata.name)}</h2>`;
    const zones = (dc.spec?.availabilityZones || []).map((z) => z.name);
    for (const r of racks) if (r.spec?.datacenter === dc.metadata.name && !zones.includes(r.spec?.availabilityZone)) zones.push(r.spec.availabilityZone);
    for (const z of zones) {
      const inZone = racks.filter((r) => r.spec?.datacenter === dc.metadata.name && r.spec?.availabilityZone === z)
        .sort((a, b) => a.metadata.name.localeCompare(b.metadata.name));
      html += `<div class="zone" data-zone="${esc(z)}"><h3>${esc(z)}</h3><div class="racks">`;
      for (const r of inZone) { html += rackCard(r, byRack.get(r.metadata.name)); shown.add(r.metadata.name); }
      html += inZone.length ? '</div></div>' : '<p class="muted">No racks.</p></div></div>';
    }
    html += '</section>';
  }
  const other = racks.filter((r) => !shown.has(r.metadata.name));
  if (other.length) {
    html += '<section><h2>Racks of no known datacenter</h2><div class="racks">';
    for (const r of other) html += rackCard(r, byRack.get(r.metadata.name));
    html += '</div></section>';
  }
  const unracked = [...store.nodes.values()].filter((n) => !store.racks.has(n.spec?.rack?.name || ''));
  if (unracked.length) {
    html += `<section><h2>Nodes in no rack</h2><table><tr><th>Node</th><th>Phase</th><th>Rack</th></tr>${
      unracked.map((n) => `<tr data-node="${esc(n.metadata.name)}" data-phase="${esc(phaseOf(n))}"><td><a href="#/node/${encodeURIComponent(n.metadata.name)}">${esc(n.metadata.name)}</a></td><td><span class="badge phase-${esc(phaseOf(n))}">${esc(phaseOf(n))}</span></td><td>${esc(n.spec?.rack?.name || '')}</td></tr>`).join('')
    }</table></section>`;
  }
  if (!dcs.length && !racks.length && !store.nodes.size) html += '<p class="muted">Nothing yet: apply a Datacenter, Racks and Nodes.</p>';
  return html;
}

function legend() {
  return `<div class="legend">${['Ready', 'Provisioning', 'Provisioned', 'Registered', 'Maintenance', 'Failed']
    .map((p) => `<span class="badge phase-${p}">${p}</span>`).join('')}</div>`;
}

// One rack as an elevation to scale: U 1 at the bottom, each Node at its position and height.
function rackCard(rack, nodes) {
  nodes = nodes || [...store.nodes.values()].filter((n) => n.spec?.rack?.name === rack.metadata.name);
  const h = rack.spec?.heightU || 42;
  const st = rack.status || {};
  const budget = rack.spec?.powerBudgetKw;
  const drawn = st.powerDrawnKw ?? 0;
  const bad = (st.conditions || []).filter((c) => c.status === 'False');
  const overlapping = overlaps(nodes);
  let svg = `<svg class="elevation" width="${RACK_W}" height="${h * U_PX + 2}" viewBox="0 0 ${RACK_W} ${h * U_PX + 2}" role="img" aria-label="rack ${esc(rack.metadata.name)}">`;
  for (let u = 1; u <= h; u++) {
    const y = (h - u) * U_PX + 1;
    svg += `<rect class="u" x="22" y="${y}" width="${RACK_W - 24}" height="${U_PX}"/><text class="unum" x="2" y="${y + 10}">${u}</text>`;
  }
  for (const n of nodes) svg += nodeBox(n, h, overlapping.has(n.metadata.name));
  svg += '</svg>';
  return `<div class="rack${bad.length ? ' warn' : ''}" data-rack="${esc(rack.metadata.name)}">
    <h4>${esc(rack.metadata.name)}</h4>
    <div class="meta">${st.unitsUsed ?? '?'} U used, ${st.unitsFree ?? '?'} free of ${h} U${rack.spec?.location ? ` · ${esc(rack.spec.location)}` : ''}</div>
    <div class="meta">power ${drawn.toFixed(2)} kW${budget ? ` of ${budget} kW` : ' (no budget)'}</div>
    ${budget ? `<meter class="power${drawn > budget ? ' over' : ''}" min="0" max="${Math.max(budget, drawn)}" high="${budget * 0.9}" optimum="0" value="${drawn}" data-power="${drawn}" title="${drawn.toFixed(2)} of ${budget} kW"></meter>` : ''}
    ${bad.map((c) => `<div class="cond" data-condition="${esc(c.type)}">${esc(c.reason || c.type)}: ${esc(c.message || '')}</div>`).join('')}
    ${svg}</div>`;
}

function overlaps(nodes) {
  const out = new Set();
  const used = new Map();
  for (const n of nodes) {
    const p = n.spec?.rack?.position || 0;
    for (let u = p; u < p + (n.spec?.rack?.heightU || 1); u++) {
      if (used.has(u)) { out.add(n.metadata.name); out.add(used.get(u)); } else used.set(u, n.metadata.name);
    }
  }
  return out;
}

function geom(n) {
  const r = n.spec?.rack || {};
  return `${r.name || ''}|${r.position || 0}|${r.heightU || 1}`;
}

function nodeBox(n, rackH, overlap) {
  const pos = n.spec?.rack?.position || 1;
  const hu = n.spec?.rack?.heightU || 1;
  const y = (rackH - (pos + hu - 1)) * U_PX + 1;
  const name = n.metadata.name;
  const phase = phaseOf(n);
  return `<g class="node phase-${esc(phase)}${overlap ? ' overlap' : ''}" data-node="${esc(name)}" data-phase="${esc(phase)}" data-position="${pos}" data-height="${hu}" data-geom="${esc(geom(n))}" data-y="${y}">
    <a href="#/node/${encodeURIComponent(name)}"><rect x="24" y="${y + 1}" width="${RACK_W - 28}" height="${hu * U_PX - 2}"/>
    <text x="30" y="${y + Math.min(hu * U_PX, 14) - 3}">${esc(name)} · ${esc(phase)}</text>
    <title>${esc(name)}: ${esc(phase)}${n.status?.power ? `, power ${esc(n.status.power)}` : ''}</title></a></g>`;
}

// A Node whose place did not change: only its colour and label change, in place.
function patchNode(n) {
  const el = $(`g[data-node="${cssEsc(n.metadata.name)}"]`);
  if (!el || el.dataset.geom !== geom(n)) return false;
  const phase = phaseOf(n);
  if (el.dataset.phase !== phase) {
    el.classList.replace(`phase-${el.dataset.phase}`, `phase-${phase}`);
    el.dataset.phase = phase;
    el.querySelector('text').textContent = `${n.metadata.name} · ${phase}`;
  }
  el.querySelector('title').textContent = `${n.metadata.name}: ${phase}${n.status?.power ? `, power ${n.status.power}` : ''}`;
  return true;
}

// ---- Node page -------------------------------------------------------------------------

// The Node's page: its facts (redrawn when it changes) above its Events and log (followed).
function nodePage(view, name) {
  if (!store.nodes.has(name)) { view.innerHTML = `<h2>${esc(name)}</h2><p class="muted">No such Node (yet).</p>`; return; }
  view.innerHTML = `<div id="node-info">${nodeInfo(name)}</div>
  <div class="card"><h3>Events</h3><table id="events"><tr><th>Last seen</th><th>Type</th><th>Reason</th><th>Message</th><th>Count</th></tr></table></div>
  <div class="card"><h3>Controller log <span class="muted">(following)</span></h3><pre class="log" id="log"></pre></div>`;
  nodeEvents(name);
  nodeLog(name);
}

function nodeInfo(name) {
  const n = store.nodes.get(name);
  const s = n.spec || {};
  const st = n.status || {};
  const inv = st.inventory || {};
  const hist = st.provisioning?.history || [];
  const row = (k, v) => (v === undefined || v === null || v === '' ? '' : `<tr><th>${esc(k)}</th><td>${esc(v)}</td></tr>`);
  return `
  <h2 data-node-page="${esc(name)}">${esc(name)} <span class="badge phase-${esc(phaseOf(n))}">${esc(phaseOf(n))}</span></h2>
  <div class="grid">
    <div class="card"><h3>Spec</h3><table>
      ${row('rack', s.rack ? `${s.rack.name}, U ${s.rack.position}${(s.rack.heightU || 1) > 1 ? `–${s.rack.position + s.rack.heightU - 1}` : ''}` : '')}
      ${row('BMC', s.bmc ? `${s.bmc.protocol || ''} ${s.bmc.address || ''}${s.bmc.port ? `:${s.bmc.port}` : ''}` : '')}
      ${row('boot MACs', (s.bootMACs || []).join(', '))}
      ${row('profile', s.profile)}${row('provisioning', s.provisioning)}
      ${row('power draw', s.powerDrawKw !== undefined ? `${s.powerDrawKw} kW` : '')}
      ${row('maintenance', s.maintenance ? 'yes' : '')}</table></div>
    <div class="card"><h3>Status</h3><table>
      ${row('phase', st.phase)}${row('power', st.power)}${row('profile', st.profile)}
      ${row('addresses', (st.addresses || []).join(', '))}
      ${row('installed image', st.provisioning?.installedChecksum)}</table>
      <table><tr><th>Condition</th><th>Status</th><th>Reason</th><th>Message</th></tr>
      ${(st.conditions || []).map((c) => `<tr><td>${esc(c.type)}</td><td>${esc(c.status)}</td><td>${esc(c.reason)}</td><td>${esc(c.message)}</td></tr>`).join('')}</table></div>
    <div class="card"><h3>Inventory</h3><table>
      ${row('system', [inv.system?.vendor, inv.system?.product || inv.system?.model, inv.system?.serial].filter(Boolean).join(' · '))}
      ${row('CPUs', inv.cpus?.length ? `${inv.cpus.length} × ${inv.cpus[0].model || ''}` : '')}
      ${row('memory', inv.memoryBytes ? `${(inv.memoryBytes / 2 ** 30).toFixed(1)} GiB` : '')}
      ${row('disks', (inv.disks || []).map((d) => `${d.name} ${d.sizeBytes ? `${(d.sizeBytes / 1e9).toFixed(1)} GB` : ''}`).join(', '))}
      ${row('NICs', (inv.nics || []).map((x) => `${x.name || ''} ${x.mac || ''}`).join(', '))}</table></div>
    <div class="card"><h3>Phase history</h3><table class="history"><tr><th>Phase</th><th>Entered</th><th>Took</th></tr>
      ${hist.map((h, i) => {
        const next = hist[i + 1];
        const took = next ? `${((Date.parse(next.at) - Date.parse(h.at)) / 1000).toFixed(1)} s` : '';
        return `<tr data-phase="${esc(h.phase)}"><td>${esc(h.phase)}</td><td>${esc(h.at)}</td><td>${took}</td></tr>`;
      }).join('')}</table></div>
  </div>`;
}

async function nodeEvents(name) {
  const abort = new AbortController();
  pageStreams.push(abort);
  const sel = encodeURIComponent(`involvedObject.kind=Node,involvedObject.name=${name}`);
  const events = new Map();
  const draw = () => {
    const t = $('#events');
    if (!t) return;
    const rows = [...events.values()].sort((a, b) => (b.lastTimestamp || b.eventTime || '').localeCompare(a.lastTimestamp || a.eventTime || ''));
    t.innerHTML = `<tr><th>Last seen</th><th>Type</th><th>Reason</th><th>Message</th><th>Count</th></tr>${rows.map((e) => `<tr><td>${esc(e.lastTimestamp || e.eventTime)}</td><td>${esc(e.type)}</td><td>${esc(e.reason)}</td><td>${esc(e.message)}</td><td>${esc(e.count ?? 1)}</td></tr>`).join('')}`;
  };
  try {
    const r = await api(`/api/v1/events?fieldSelector=${sel}`, { signal: abort.signal });
    if (!r.ok) return;
    const list = await r.json();
    for (const e of list.items) events.set(e.metadata.name, e);
    draw();
    const w = await api(`/api/v1/events?watch=1&fieldSelector=${sel}&resourceVersion=${list.metadata.resourceVersion}`, { signal: abort.signal });
    for await (const ev of lines(w.body)) {
      if (ev.type === 'DELETED') events.delete(ev.object.metadata.name);
      else if (ev.type !== 'BOOKMARK' && ev.type !== 'ERROR') events.set(ev.object.metadata.name, ev.object);
      draw();
    }
  } catch { /* navigated away or signed out */ }
}

async function nodeLog(name) {
  const abort = new AbortController();
  pageStreams.push(abort);
  try {
    const r = await api(`${GROUP}/nodes/${encodeURIComponent(name)}/log?follow=true&tailLines=200`, { signal: abort.signal, headers: { Accept: 'text/plain' } });
    const pre = $('#log');
    if (!r.ok) { if (pre) pre.textContent = `(no log: ${r.status})`; return; }
    const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      const el = $('#log');
      if (!el) return;
      const stick = el.scrollTop + el.clientHeight >= el.scrollHeight - 4;
      el.append(value);
      if (stick) el.scrollTop = el.scrollHeight;
    }
  } catch { /* navigated away or signed out */ }
}

// ---- Service layers --------------------------------------------------------------------

function servicesPage() {
  let html = '<h2>Service stacks</h2>';
  if (missing.has('servicestacks')) html += '<p class="muted">This server has no ServiceStack kind.</p>';
  else if (!store.servicestacks.size) html += '<p class="muted">No ServiceStacks.</p>';
  for (const s of store.servicestacks.values()) html += stackCard(s);
  html += '<h2>Git sources</h2>';
  if (missing.has('gitsources')) html += '<p class="muted">This server has no GitSource kind.</p>';
  else if (!store.gitsources.size) html += '<p class="muted">No GitSources.</p>';
  else {
    html += `<table><tr><th>Name</th><th>Repository</th><th>Last applied</th><th>Drift</th><th>Errors</th><th>Ready</th></tr>${
      [...store.gitsources.values()].map((g) => {
        const st = g.status || {};
        const ready = (st.conditions || []).find((c) => c.type === 'Ready');
        return `<tr data-gitsource="${esc(g.metadata.name)}"><td>${esc(g.metadata.name)}</td><td>${esc(g.spec?.url)} ${esc(g.spec?.ref?.branch || g.spec?.ref?.tag || g.spec?.ref?.commit || '')}</td>
          <td>${esc((st.lastAppliedCommit || '').slice(0, 12))} ${esc(st.lastAppliedMessage || '')}<br><span class="muted">${esc(st.lastAppliedAt || '')}</span></td>
          <td>${(st.drift || []).length ? (st.drift || []).map((d) => esc(`${d.kind || ''}/${d.name || ''} ${d.field || ''}`)).join('<br>') : 'none'}</td>
          <td>${(st.errors || []).map((e) => esc(`${e.file}${e.line ? `:${e.line}` : ''}: ${e.message}`)).join('<br>')}</td>
          <td>${esc(ready ? `${ready.status} ${ready.reason || ''}` : '')}</td></tr>`;
      }).join('')}</table>`;
  }
  return html;
}

// A stack's layers as their dependency graph: a column per depth, an arrow per dependency.
function stackCard(s) {
  const layers = s.spec?.layers || [];
  const status = new Map((s.status?.layers || []).map((l) => [l.name, l]));
  const depth = new Map();
  const d = (name, seen = new Set()) => {
    if (depth.has(name)) return depth.get(name);
    if (seen.has(name)) return 0;
    seen.add(name);
    const l = layers.find((x) => x.name === name);
    const v = 1 + Math.max(-1, ...(l?.dependsOn || []).map((x) => d(x, seen)));
    depth.set(name, v);
    return v;
  };
  layers.forEach((l) => d(l.name));
  const cols = new Map();
  for (const l of layers) {
    const c = depth.get(l.name);
    if (!cols.has(c)) cols.set(c, []);
    cols.get(c).push(l);
  }
  const BW = 190; const BH = 70; const GX = 60; const GY = 18;
  const at = new Map();
  for (const [c, ls] of cols) ls.forEach((l, i) => at.set(l.name, { x: 10 + c * (BW + GX), y: 10 + i * (BH + GY) }));
  const w = 20 + Math.max(1, cols.size) * (BW + GX);
  const h = 20 + Math.max(1, ...[...cols.values()].map((x) => x.length)) * (BH + GY);
  let svg = `<svg width="${w}" height="${h}" role="img" aria-label="layers of ${esc(s.metadata.name)}"><defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6" markerHeight="6" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#98a2b3"/></marker></defs>`;
  for (const l of layers) {
    for (const dep of l.dependsOn || []) {
      const a = at.get(dep); const b = at.get(l.name);
      if (a && b) svg += `<path class="edge" d="M${a.x + BW},${a.y + BH / 2} C${a.x + BW + GX / 2},${a.y + BH / 2} ${b.x - GX / 2},${b.y + BH / 2} ${b.x},${b.y + BH / 2}"/>`;
    }
  }
  for (const l of layers) {
    const p = at.get(l.name); const st = status.get(l.name) || {};
    const members = st.members || [];
    const ready = members.filter((m) => m.ready).length;
    const phase = st.phase || 'Pending';
    svg += `<g class="layer phase-${esc(phase)}" data-layer="${esc(l.name)}" data-phase="${esc(phase)}"><rect x="${p.x}" y="${p.y}" width="${BW}" height="${BH}"/>
      <text x="${p.x + 8}" y="${p.y + 18}" font-weight="600">${esc(l.name)} · ${esc(phase)}</text>
      <text x="${p.x + 8}" y="${p.y + 36}">${esc((l.services || []).map((x) => x.type || x).join(', '))}</text>
      <text x="${p.x + 8}" y="${p.y + 54}">${members.length ? `${ready}/${members.length} members ready` : ''}${st.waitingFor ? ` · waits: ${esc(st.waitingFor.slice(0, 24))}` : ''}</text>
      <title>${esc(l.name)}: ${esc(phase)}${st.waitingFor ? ` — waiting for ${esc(st.waitingFor)}` : ''}</title></g>`;
  }
  svg += '</svg>';
  const rows = [...status.values()].flatMap((l) => (l.members || []).map((m) => `<tr><td>${esc(l.name)}</td><td>${esc(m.instance)}</td><td>${esc(m.node)}</td><td>${esc(m.address || '')}</td><td>${esc(m.phase || '')}</td><td>${m.ready ? 'yes' : 'no'}</td></tr>`));
  return `<div class="card" data-stack="${esc(s.metadata.name)}"><h3>${esc(s.metadata.name)} <span class="badge phase-${esc(s.status?.phase || 'Pending')}">${esc(s.status?.phase || 'Pending')}</span> <span class="muted">${esc(s.status?.layersReady || '')}</span></h3>
    ${svg}
    ${rows.length ? `<table><tr><th>Layer</th><th>Instance</th><th>Node</th><th>Address</th><th>Phase</th><th>Ready</th></tr>${rows.join('')}</table>` : ''}</div>`;
}

// ---- Sign in / out ---------------------------------------------------------------------

function signOut(message) {
  signedIn = false;
  for (const s of [...streams, ...pageStreams]) s.abort();
  streams.length = 0; pageStreams = [];
  for (const k of KINDS) store[k].clear();
  connected.clear();
  token = '';
  sessionStorage.removeItem('groundwork-token');
  $('#view').innerHTML = '';
  $('#nav').hidden = true; $('#live').hidden = true; $('#logout').hidden = true;
  $('#login').hidden = false;
  $('#login-error').textContent = message || '';
}

async function signIn() {
  // Probe with a read every console user needs.
  const r = await fetch(`${GROUP}/nodes?limit=1`, { headers: token ? { Authorization: `Bearer ${token}` } : {} });
  if (r.status === 401) return 'The server refused this token.';
  if (r.status === 403) return 'This identity may not read Nodes: ask for the view role.';
  if (!r.ok) return `The server answered ${r.status}.`;
  signedIn = true;
  $('#login').hidden = true;
  $('#nav').hidden = false; $('#live').hidden = false; $('#logout').hidden = false;
  for (const k of KINDS) {
    const a = new AbortController();
    streams.push(a);
    follow(k, a);
  }
  render();
  return '';
}

$('#login').addEventListener('submit', async (e) => {
  e.preventDefault();
  token = $('#token').value.trim();
  const err = await signIn();
  if (err) { token = ''; $('#login-error').textContent = err; return; }
  sessionStorage.setItem('groundwork-token', token);
  $('#token').value = '';
});
$('#logout').addEventListener('click', () => signOut(''));
window.addEventListener('hashchange', () => { if (signedIn) render(); });

(async () => {
  // A stored token, or a client certificate the browser presents, signs in at once.
  const err = await signIn().catch(() => 'offline');
  if (err) { token = ''; sessionStorage.removeItem('groundwork-token'); signOut(''); }
})();

// For tests and benchmarks: what the page holds.
window.groundwork = { store, connected, missing };
