// Drives the web console in Debian's real Chromium with Playwright (playwright-core from npm,
// `executablePath` set): tests/console.rs runs it against a real server.
//   node tests/ui/console.mjs test        the acceptance checks; exit 1 with a message on failure
//   node tests/ui/console.mjs bench       time to first render and per-update cost (JSON)
//   node tests/ui/console.mjs screenshot  the datacenter view and a Node page, as PNGs in OUT
// Environment: GW_URL (https://127.0.0.1:PORT), GW_ADMIN_TOKEN, GW_VIEW_TOKEN, GW_NODE (a Node
// to change and to open), CHROMIUM (/usr/bin/chromium), OUT (screenshots), PLAYWRIGHT (the
// playwright-core module's directory).
import { createRequire } from 'node:module';
import assert from 'node:assert/strict';

const require = createRequire(import.meta.url);
const { chromium } = require(process.env.PLAYWRIGHT || 'playwright-core');
const mode = process.argv[2] || 'test';
const URL = process.env.GW_URL;
const ADMIN = process.env.GW_ADMIN_TOKEN;
const VIEW = process.env.GW_VIEW_TOKEN;
const GROUP = '/apis/groundwork.dev/v1alpha1';
const U_PX = 14;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-dev-shm-usage'],
});
const results = {};
try {
  const admin = await browser.newContext({ ignoreHTTPSErrors: true });
  const api = async (method, path, body, token = ADMIN, type = 'application/merge-patch+json') => {
    const r = await admin.request.fetch(URL + path, {
      method, headers: { Authorization: `Bearer ${token}`, 'Content-Type': type }, data: body,
    });
    return { status: r.status(), json: await r.json().catch(() => null) };
  };
  const watches = async () => {
    const r = await admin.request.get(`${URL}/metrics`, { headers: { Authorization: `Bearer ${ADMIN}` } });
    const out = {};
    for (const l of (await r.text()).split('\n')) {
      const m = l.match(/^groundwork_api_watches\{.*resource="([^"]+)".*\} (\d+)/);
      if (m) out[m[1]] = (out[m[1]] || 0) + Number(m[2]);
    }
    return out;
  };
  const signIn = async (page, token) => {
    await page.goto(`${URL}/ui/`);
    await page.locator('#login').waitFor({ state: 'visible', timeout: 10000 });
    await page.fill('#token', token);
    await page.click('#login button[type=submit]');
  };

  if (mode === 'test') await acceptance(api, watches, signIn);
  else if (mode === 'bench') await bench(api, signIn);
  else if (mode === 'screenshot') await screenshots(signIn);
  else throw new Error(`unknown mode ${mode}`);
  console.log(JSON.stringify(results));
} finally {
  await browser.close();
}

async function acceptance(api, watches, signIn) {
  const ctx = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1400, height: 1000 } });
  const page = await ctx.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));

  // Unauthenticated: the login page, no data; the API itself answers 401.
  await page.goto(`${URL}/ui/`);
  await page.locator('#login').waitFor({ state: 'visible', timeout: 10000 });
  assert.equal(await page.locator('[data-node], [data-rack]').count(), 0, 'data shown before sign-in');
  assert.equal(await page.locator('#nav').isVisible(), false, 'navigation shown before sign-in');
  const anon = await page.evaluate((g) => fetch(`${g}/nodes`).then((r) => r.status), GROUP);
  assert.equal(anon, 401, 'the API without a token');
  await page.fill('#token', 'not-a-token');
  await page.click('#login button[type=submit]');
  await page.locator('#login-error', { hasText: 'refused' }).waitFor({ timeout: 5000 });

  // A view user signs in and sees every Node at its U position in its rack.
  const before = await watches();
  await page.fill('#token', VIEW);
  await page.click('#login button[type=submit]');
  await page.locator('[data-rack]').first().waitFor({ timeout: 10000 });
  assert.equal(await page.locator('#login').isVisible(), false, 'the login form stays after sign-in');
  assert.equal(await page.locator('#logout').isVisible(), true, 'no sign-out button');
  const nodes = (await api('GET', `${GROUP}/nodes`)).json.items;
  const racks = new Map((await api('GET', `${GROUP}/racks`)).json.items.map((r) => [r.metadata.name, r]));
  let placed = 0;
  for (const n of nodes) {
    const rr = n.spec?.rack;
    if (!rr || !racks.has(rr.name)) continue;
    const g = page.locator(`[data-rack="${rr.name}"] g[data-node="${n.metadata.name}"]`);
    await g.waitFor({ timeout: 5000 });
    const h = racks.get(rr.name).spec.heightU;
    const hu = rr.heightU || 1;
    assert.equal(await g.getAttribute('data-position'), String(rr.position), `${n.metadata.name} position`);
    assert.equal(await g.getAttribute('data-height'), String(hu), `${n.metadata.name} height`);
    assert.equal(await g.locator('rect').getAttribute('y'), String((h - (rr.position + hu - 1)) * U_PX + 2),
      `${n.metadata.name} drawn at U ${rr.position}`);
    placed += 1;
  }
  assert.ok(placed >= 2, `only ${placed} racked Nodes drawn`);
  results.nodesPlaced = placed;
  results.racksDrawn = await page.locator('[data-rack]').count();
  assert.equal(results.racksDrawn, racks.size, 'every Rack drawn');

  // The console costs the server one watch per kind.
  await page.waitForFunction(() => document.querySelector('#live')?.classList.contains('ok'), null, { timeout: 10000 });
  const after = await watches();
  results.watchesOpened = {};
  for (const k of new Set([...Object.keys(before), ...Object.keys(after)])) {
    const d = (after[k] || 0) - (before[k] || 0);
    if (d) results.watchesOpened[k] = d;
  }
  for (const k of ['datacenters', 'racks', 'nodes', 'servicestacks', 'gitsources']) {
    assert.equal(results.watchesOpened[k], 1, `watches of ${k}: ${JSON.stringify(results.watchesOpened)}`);
  }
  assert.equal(Object.keys(results.watchesOpened).length, 5, JSON.stringify(results.watchesOpened));

  // A status change by another client shows within a second, without a reload.
  const name = process.env.GW_NODE;
  const url = page.url();
  for (const phase of ['Maintenance', 'Failed', 'Ready']) {
    const t0 = Date.now();
    const r = await api('PATCH', `${GROUP}/nodes/${name}/status`, { status: { phase } });
    assert.equal(r.status, 200, `status patch: ${JSON.stringify(r.json)}`);
    await page.locator(`g[data-node="${name}"][data-phase="${phase}"]`).waitFor({ timeout: 1000 });
    (results.liveMs ||= []).push(Date.now() - t0);
  }
  assert.equal(page.url(), url, 'the page was not reloaded');

  // A Node put on an occupied unit: the Rack's condition is written on its drawing and both
  // Nodes are outlined.
  const first = nodes.find((n) => n.spec?.rack);
  const dup = await api('POST', `${GROUP}/nodes`, {
    apiVersion: 'groundwork.dev/v1alpha1', kind: 'Node', metadata: { name: 'console-overlap' },
    spec: { rack: { name: first.spec.rack.name, position: first.spec.rack.position }, bootMACs: ['02:00:00:00:99:01'] },
  }, ADMIN, 'application/json');
  assert.equal(dup.status, 201, JSON.stringify(dup.json));
  await page.locator(`[data-rack="${first.spec.rack.name}"] .cond[data-condition]`).first().waitFor({ timeout: 5000 });
  results.rackCondition = await page.locator(`[data-rack="${first.spec.rack.name}"] .cond`).first().textContent();
  assert.ok(await page.locator(`[data-rack="${first.spec.rack.name}"] g.overlap`).count() >= 2, 'overlap outlined');
  await api('DELETE', `${GROUP}/nodes/console-overlap`);

  // The view user may not write: 403 from the API, with the console's own token.
  const write = await page.evaluate(async ([g, n]) => {
    const t = sessionStorage.getItem('groundwork-token');
    const r = await fetch(`${g}/nodes/${n}`, {
      method: 'PATCH', body: '{"metadata":{"labels":{"x":"y"}}}',
      headers: { Authorization: `Bearer ${t}`, 'Content-Type': 'application/merge-patch+json' },
    });
    return r.status;
  }, [GROUP, name]);
  assert.equal(write, 403, 'a view user wrote');

  // The Node page: spec, status, history, Events (live) and the controllers' log.
  await page.click(`g[data-node="${name}"] a`);
  await page.locator(`[data-node-page="${name}"]`).waitFor({ timeout: 5000 });
  await page.evaluate(() => { document.querySelector('#log').dataset.mark = 'kept'; });
  const now = Date.now();
  const history = ['Discovering', 'Inventoried', 'Provisioning', 'Provisioned', 'Ready']
    .map((phase, i) => ({ phase, at: new Date(now - (5 - i) * 30000).toISOString() }));
  await api('PATCH', `${GROUP}/nodes/${name}/status`, { status: { provisioning: { history } } });
  await page.locator('table.history tr[data-phase="Provisioned"]').waitFor({ timeout: 2000 });
  assert.equal(await page.locator('table.history tr[data-phase]').count(), 5, 'phase history');
  assert.ok((await page.locator('table.history').textContent()).includes('30.0 s'), 'phase durations');
  assert.equal(await page.locator('#log[data-mark="kept"]').count(), 1, 'the log stream restarted on a Node change');
  const ev = await api('POST', '/api/v1/namespaces/default/events', {
    apiVersion: 'v1', kind: 'Event', metadata: { name: `${name}.console-test` },
    involvedObject: { apiVersion: 'groundwork.dev/v1alpha1', kind: 'Node', name },
    reason: 'ConsoleTest', message: 'written by the console test', type: 'Normal',
    firstTimestamp: new Date().toISOString(), lastTimestamp: new Date().toISOString(), count: 1,
  }, ADMIN, 'application/json');
  assert.ok([200, 201].includes(ev.status), `event: ${ev.status} ${JSON.stringify(ev.json)}`);
  await page.locator('#events td', { hasText: 'ConsoleTest' }).waitFor({ timeout: 2000 });
  await page.locator('#log').waitFor();
  assert.ok(!(await page.locator('#log').textContent()).startsWith('(no log'), 'the log stream');

  // Service layers: the stack's graph, and GitSources (none here) without failing.
  await page.click('#nav a[data-view="services"]');
  await page.locator('[data-stack]').first().waitFor({ timeout: 5000 });
  const stacks = (await api('GET', `${GROUP}/servicestacks`)).json.items;
  const layers = stacks.reduce((a, s) => a + (s.spec.layers || []).length, 0);
  assert.equal(await page.locator('g[data-layer]').count(), layers, 'one box per layer');
  results.layersDrawn = layers;

  // Sign out: back to the login page, nothing kept.
  await page.click('#logout');
  await page.locator('#login').waitFor({ state: 'visible' });
  assert.equal(await page.evaluate(() => sessionStorage.getItem('groundwork-token')), null);
  assert.deepEqual(errors, [], 'script errors on the page');
}

async function bench(api, signIn) {
  const ctx = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1600, height: 1000 } });
  const page = await ctx.newPage();
  const total = (await api('GET', `${GROUP}/nodes`)).json.items.length;
  const t0 = Date.now();
  await signIn(page, ADMIN);
  await page.waitForFunction((n) => document.querySelectorAll('g[data-node]').length >= n, total, { timeout: 60000, polling: 50 });
  results.nodes = total;
  results.firstRenderMs = Date.now() - t0;
  const names = (await api('GET', `${GROUP}/nodes`)).json.items.map((n) => n.metadata.name);
  const lat = [];
  const cdp = await ctx.newCDPSession(page);
  await cdp.send('Performance.enable');
  const metric = async (k) => (await cdp.send('Performance.getMetrics')).metrics.find((m) => m.name === k).value;
  const scriptBefore = await metric('ScriptDuration') + await metric('LayoutDuration') + await metric('RecalcStyleDuration');
  const N = 200;
  for (let i = 0; i < N; i++) {
    const name = names[(i * 7) % names.length];
    const phase = i % 2 ? 'Ready' : 'Provisioning';
    const t = Date.now();
    await api('PATCH', `${GROUP}/nodes/${name}/status`, { status: { phase } });
    await page.locator(`g[data-node="${name}"][data-phase="${phase}"]`).waitFor({ timeout: 5000 });
    lat.push(Date.now() - t);
  }
  const scriptAfter = await metric('ScriptDuration') + await metric('LayoutDuration') + await metric('RecalcStyleDuration');
  lat.sort((a, b) => a - b);
  results.updates = N;
  results.updateLatencyMs = { p50: lat[N / 2], p99: lat[Math.floor(N * 0.99)], max: lat[N - 1] };
  results.mainThreadMsPerUpdate = Number((((scriptAfter - scriptBefore) * 1000) / N).toFixed(3));
  results.jsHeapMiB = Number(((await metric('JSHeapUsedSize')) / 2 ** 20).toFixed(1));
  results.domNodes = await metric('Nodes');
}

// SHOTS: which pages (datacenter,node), so a bring-up can be caught at different moments.
async function screenshots(signIn) {
  const which = (process.env.SHOTS || 'datacenter,node').split(',');
  const ctx = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 900 } });
  const page = await ctx.newPage();
  await signIn(page, ADMIN);
  await page.locator('[data-rack]').first().waitFor({ timeout: 10000 });
  await page.waitForTimeout(500);
  if (which.includes('datacenter')) await page.screenshot({ path: `${process.env.OUT}/console-datacenter.png`, fullPage: false });
  if (!which.includes('node')) return;
  const name = process.env.GW_NODE;
  await page.goto(`${URL}/ui/#/node/${name}`);
  await page.locator(`[data-node-page="${name}"]`).waitFor({ timeout: 10000 });
  await page.waitForTimeout(1500);
  await page.screenshot({ path: `${process.env.OUT}/console-node.png`, fullPage: true });
  results.screenshots = which;
}
