// The status page for people, on the admin port: one self-contained HTML document (inline CSS and JS,
// nothing fetched but /status itself) that renders the status it was served with at once, then polls
// /status as JSON and works out request and error rates from successive counts.

import { createHash } from 'node:crypto'
import type { ProxyStatus } from './server.ts'

/** How often the page fetches /status. */
export const STATUS_REFRESH_MS = 2_000

export interface StatusPageOptions {
  readonly refreshMs?: number
}

const STYLE = `
:root { color-scheme: light dark; --bg: #f6f7f9; --fg: #1b1f24; --muted: #57606a; --card: #fff; --line: #d8dee4;
  --up: #1a7f37; --up-bg: #dafbe1; --drain: #7d4e00; --drain-bg: #fff1c2; --eject: #b42318; --eject-bg: #ffe2e0;
  --accent: #0b5cad; --spark: #0b5cad; }
@media (prefers-color-scheme: dark) {
  :root { --bg: #0f1216; --fg: #e6edf3; --muted: #9aa7b4; --card: #161b22; --line: #30363d;
    --up: #56d364; --up-bg: #12361d; --drain: #e3b341; --drain-bg: #3a2c07; --eject: #ff7b72; --eject-bg: #4a1512;
    --accent: #58a6ff; --spark: #58a6ff; }
}
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg); font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Liberation Sans", sans-serif; }
header, main, footer { max-width: 1200px; margin: 0 auto; padding: 0 20px; }
header { padding-top: 20px; }
h1 { font-size: 1.5rem; margin: 0 0 4px; font-weight: 650; }
h1 .product { color: var(--muted); font-weight: 500; }
h2 { font-size: 1.05rem; margin: 24px 0 8px; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(145px, 1fr)); gap: 12px; margin-top: 16px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 12px 14px; }
.card dt { color: var(--muted); font-size: .8rem; text-transform: uppercase; letter-spacing: .04em; }
.card dd { margin: 4px 0 0; font-size: 1.15rem; font-weight: 600; font-variant-numeric: tabular-nums; }
.card dd small { display: block; font-size: .8rem; font-weight: 400; color: var(--muted); }
.pill { display: inline-flex; align-items: center; gap: 6px; padding: 1px 9px; border-radius: 999px; font-size: .85rem; font-weight: 600; white-space: nowrap; }
.pill::before { content: ""; width: 8px; height: 8px; border-radius: 50%; background: currentColor; }
.ok { color: var(--up); background: var(--up-bg); }
.warn { color: var(--drain); background: var(--drain-bg); }
.bad { color: var(--eject); background: var(--eject-bg); }
.banner { margin: 16px 0 0; padding: 10px 14px; border-radius: 10px; border: 1px solid currentColor; }
.banner[hidden] { display: none; }
.table-wrap { overflow-x: auto; background: var(--card); border: 1px solid var(--line); border-radius: 10px; }
table { width: 100%; border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { padding: 9px 12px; text-align: left; border-bottom: 1px solid var(--line); vertical-align: middle; }
tbody tr:last-child td { border-bottom: 0; }
th { font-size: .8rem; color: var(--muted); text-transform: uppercase; letter-spacing: .04em; font-weight: 600; }
th.num, td.num { text-align: right; }
td .addr { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono", monospace; font-weight: 600; }
td .sub { display: block; color: var(--muted); font-size: .8rem; }
td.rate { white-space: nowrap; }
td.rate span { display: inline-block; min-width: 3.2em; }
svg.spark { width: 64px; height: 18px; vertical-align: middle; margin-right: 8px; }
svg.spark polyline { fill: none; stroke: var(--spark); stroke-width: 1.5; }
tr.fresh td { background: color-mix(in srgb, var(--accent) 12%, transparent); }
@media (prefers-reduced-motion: no-preference) { tr td { transition: background-color 1.5s ease-out; } }
.empty { padding: 24px; text-align: center; color: var(--muted); }
footer { color: var(--muted); font-size: .85rem; padding: 16px 20px 28px; }
.visually-hidden { position: absolute; width: 1px; height: 1px; overflow: hidden; clip: rect(0 0 0 0); white-space: nowrap; }
.outdated main, .outdated .cards { opacity: .6; }
`

// Plain ES2017 without template literals, so it can live inside this TypeScript template string as is.
const SCRIPT = `
'use strict';
(function () {
  var body = document.body;
  var REFRESH_MS = Number(body.getAttribute('data-refresh-ms')) || 2000;
  var WINDOW_MS = 10000;
  var SPARK_POINTS = 30;
  var history = new Map();
  var lastOkAt = 0;
  var first = true;

  function $(id) { return document.getElementById(id); }
  function el(tag, props, children) {
    var node = document.createElement(tag);
    if (props) for (var k in props) {
      if (k === 'text') node.textContent = props[k];
      else if (k === 'className') node.className = props[k];
      else node.setAttribute(k, props[k]);
    }
    (children || []).forEach(function (c) { if (c) node.appendChild(c); });
    return node;
  }
  function keyOf(i) { return i.id + '@' + i.address; }
  function fmtRate(r) { return r === null ? '\\u2014' : r >= 100 ? String(Math.round(r)) : r.toFixed(1); }
  function fmtMs(ms) {
    if (ms === null || ms === undefined) return '\\u2014';
    if (ms >= 1000) return (ms / 1000).toFixed(ms >= 10000 ? 0 : 2) + ' s';
    return (ms >= 100 ? ms.toFixed(0) : ms >= 10 ? ms.toFixed(1) : ms.toFixed(2)) + ' ms';
  }
  function fmtAgo(iso) {
    if (!iso) return '\\u2014';
    var s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
    if (s < 5) return 'just now';
    if (s < 90) return s + ' s ago';
    var m = Math.floor(s / 60);
    if (m < 90) return m + ' min ago';
    var h = Math.floor(m / 60);
    if (h < 48) return h + ' h ' + (m % 60) + ' min ago';
    return Math.floor(h / 24) + ' days ago';
  }
  function timeEl(iso) {
    return iso ? el('time', { datetime: iso, title: iso, text: fmtAgo(iso) }) : document.createTextNode('\\u2014');
  }
  var STATE_CLASS = { up: 'ok', draining: 'warn', ejected: 'bad' };
  function pill(text, cls) { return el('span', { className: 'pill ' + cls, text: text }); }

  /** Adds a sample of the instance's counters; returns rate and error share over the last WINDOW_MS. */
  function sample(inst, now) {
    var key = keyOf(inst);
    var h = history.get(key);
    if (!h || inst.requests < h.samples[h.samples.length - 1].requests) {
      h = { samples: [], rates: [], fresh: !first };
      history.set(key, h);
    } else {
      h.fresh = false;
    }
    var prev = h.samples[h.samples.length - 1];
    h.samples.push({ t: now, requests: inst.requests, errors: inst.errors });
    while (h.samples.length > 2 && now - h.samples[1].t >= WINDOW_MS) h.samples.shift();
    if (prev && now > prev.t) {
      h.rates.push((inst.requests - prev.requests) / ((now - prev.t) / 1000));
      if (h.rates.length > SPARK_POINTS) h.rates.shift();
    }
    var oldest = h.samples[0];
    if (h.samples.length < 2 || now <= oldest.t) return { rate: null, errorRate: null, errorShare: null, h: h };
    var seconds = (now - oldest.t) / 1000;
    var dReq = inst.requests - oldest.requests;
    var dErr = Math.max(0, inst.errors - oldest.errors);
    return { rate: dReq / seconds, errorRate: dErr / seconds, errorShare: dReq > 0 ? dErr / dReq : null, h: h };
  }

  function sparkline(rates, max) {
    var ns = 'http://www.w3.org/2000/svg';
    var svg = document.createElementNS(ns, 'svg');
    svg.setAttribute('class', 'spark');
    svg.setAttribute('viewBox', '0 0 64 18');
    svg.setAttribute('aria-hidden', 'true');
    svg.setAttribute('focusable', 'false');
    if (rates.length > 1) {
      var step = 64 / (rates.length - 1);
      var pts = rates.map(function (r, i) { return (i * step).toFixed(1) + ',' + (17 - (r / max) * 16).toFixed(1); });
      var line = document.createElementNS(ns, 'polyline');
      line.setAttribute('points', pts.join(' '));
      svg.appendChild(line);
    }
    return svg;
  }

  function render(status, now) {
    document.title = status.service + ' \\u00b7 fleetgate status';
    $('service').textContent = status.service;
    var src = status.source;
    $('source-kind').textContent = src.kind;
    $('source-status').replaceChildren(pill(src.status, src.status === 'connected' ? 'ok' : src.status === 'connecting' ? 'warn' : 'bad'));
    $('membership').replaceChildren(pill(src.stale ? 'stale' : 'current', src.stale ? 'bad' : 'ok'),
      el('small', { text: src.revision === null ? 'no membership yet' : 'revision ' + src.revision + ', changed ' + fmtAgo(src.changedAt) }));
    $('stale-banner').hidden = !src.stale;
    $('ready').replaceChildren(pill(status.ready ? 'ready' : 'not ready', status.ready ? 'ok' : 'bad'));

    var counts = { up: 0, draining: 0, ejected: 0 };
    var total = 0;
    var anyRate = false;
    var seen = new Set();
    var instances = status.instances.slice().sort(function (a, b) {
      return a.id.localeCompare(b.id, 'en', { numeric: true }) || a.address.localeCompare(b.address, 'en', { numeric: true });
    });
    var samples = instances.map(function (inst) {
      counts[inst.state] = (counts[inst.state] || 0) + 1;
      seen.add(keyOf(inst));
      var s = sample(inst, now);
      if (s.rate !== null) { total += s.rate; anyRate = true; }
      return s;
    });
    // One scale for every sparkline, so their heights compare.
    var sparkMax = 0.0001;
    samples.forEach(function (s) { s.h.rates.forEach(function (r) { if (r > sparkMax) sparkMax = r; }); });
    var rows = instances.map(function (inst, index) {
      var s = samples[index];
      var who = el('td', null, [el('span', { className: 'addr', text: inst.address })]);
      var labels = Object.keys(inst.labels || {}).map(function (k) { return k + '=' + inst.labels[k]; });
      var sub = (inst.id !== inst.address ? 'id ' + inst.id : '') + (labels.length ? (inst.id !== inst.address ? ' \\u00b7 ' : '') + labels.join(', ') : '');
      if (sub) who.appendChild(el('span', { className: 'sub', text: sub }));
      var share = s.errorShare === null ? '\\u2014' : (s.errorShare * 100).toFixed(s.errorShare > 0 && s.errorShare < 0.1 ? 1 : 0) + ' %';
      var tr = el('tr', { 'data-instance': inst.address, 'data-state': inst.state }, [
        who,
        el('td', null, [
          pill(inst.state, STATE_CLASS[inst.state] || 'warn'),
          inst.slowStartUntil ? el('span', { className: 'sub', 'data-slow-start': inst.slowStartUntil, title: 'a share growing to its full one until ' + inst.slowStartUntil, text: 'slow start' }) : null
        ]),
        el('td', { className: 'num rate' }, [sparkline(s.h.rates, sparkMax), el('span', { text: fmtRate(s.rate) })]),
        el('td', { className: 'num', title: s.errorRate === null ? '' : s.errorRate.toFixed(2) + ' errors/s', text: share }),
        el('td', { className: 'num', text: fmtMs(inst.p50Ms) }),
        el('td', { className: 'num', text: fmtMs(inst.p99Ms) }),
        el('td', { className: 'num', text: String(inst.inflight) }),
        el('td', { className: 'num', text: String(inst.weight) }),
        el('td', null, [timeEl(inst.changedAt)])
      ]);
      if (s.h.fresh) tr.className = 'fresh';
      return tr;
    });
    history.forEach(function (_, key) { if (!seen.has(key)) history.delete(key); });
    var tbody = $('rows');
    if (rows.length === 0) {
      var td = el('td', { colspan: '9', className: 'empty', text: 'No instances in the membership.' });
      tbody.replaceChildren(el('tr', null, [td]));
    } else {
      tbody.replaceChildren.apply(tbody, rows);
    }
    $('count-up').textContent = String(counts.up);
    $('count-other').textContent = counts.draining + ' draining \\u00b7 ' + counts.ejected + ' ejected';
    $('total-rate').textContent = anyRate ? fmtRate(total) : '\\u2014';
    var q = status.queue;
    $('queue-waiting').textContent = String(q.waiting);
    $('queue-limit').textContent = (q.limitPerInstance === null ? 'no connection limit' : 'limit ' + q.limitPerInstance + ' per instance')
      + ' \\u00b7 ' + q.timedOut + ' timed out';
    first = false;
  }

  function setStatusLine(text, failed) {
    var line = $('updated');
    line.textContent = text;
    document.documentElement.classList.toggle('outdated', failed);
    $('fetch-error').hidden = !failed;
  }

  function poll() {
    var startedAt = performance.now();
    var controller = new AbortController();
    var timer = setTimeout(function () { controller.abort(); }, Math.max(1000, REFRESH_MS * 2));
    fetch(location.pathname, { headers: { Accept: 'application/json' }, cache: 'no-store', signal: controller.signal })
      .then(function (res) {
        if (!res.ok) throw new Error('HTTP ' + res.status);
        return res.json();
      })
      .then(function (status) {
        render(status, performance.now());
        lastOkAt = Date.now();
        setStatusLine('Updated ' + new Date(lastOkAt).toLocaleTimeString() + '; refreshes every ' + (REFRESH_MS / 1000) + ' s.', false);
      })
      .catch(function (err) {
        var since = lastOkAt ? ' Last update ' + new Date(lastOkAt).toLocaleTimeString() + '.' : '';
        $('fetch-error').textContent = 'Cannot reach the proxy\\u2019s admin port (' + (err && err.name === 'AbortError' ? 'timed out' : String(err && err.message || err)) + '). Retrying.' + since;
        setStatusLine('Update failed; retrying every ' + (REFRESH_MS / 1000) + ' s.', true);
      })
      .then(function () {
        clearTimeout(timer);
        // A fixed cadence: the time the request took counts toward the interval.
        setTimeout(poll, Math.max(0, REFRESH_MS - (performance.now() - startedAt)));
      });
  }

  var initial = JSON.parse($('initial-status').textContent);
  render(initial, performance.now());
  lastOkAt = Date.now();
  setStatusLine('Updated ' + new Date(lastOkAt).toLocaleTimeString() + '; refreshes every ' + (REFRESH_MS / 1000) + ' s.', false);
  setTimeout(poll, REFRESH_MS);
})();
`

const sha256 = (text: string): string => `'sha256-${createHash('sha256').update(text).digest('base64')}'`

// Nothing may load from anywhere: the only network use is fetching /status from this same admin port.
const CSP = [
  "default-src 'none'",
  `script-src ${sha256(SCRIPT)}`,
  `style-src ${sha256(STYLE)}`,
  "connect-src 'self'",
  "img-src 'none'",
  "base-uri 'none'",
  "form-action 'none'",
].join('; ')

const HTML_ESCAPES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }

function escapeHtml (text: string): string {
  return text.replace(/[&<>"']/g, c => HTML_ESCAPES[c]!)
}

/** JSON that is safe inside a <script> element: no "</script>" or "<!--" can be formed. */
function scriptJson (value: unknown): string {
  return JSON.stringify(value).replace(/</g, '\\u003c').replace(/\u2028/g, '\\u2028').replace(/\u2029/g, '\\u2029')
}

/** The whole page, with `status` embedded so the first paint needs no second request. */
export function renderStatusPage (status: ProxyStatus, options: StatusPageOptions = {}): string {
  const refreshMs = options.refreshMs ?? STATUS_REFRESH_MS
  const service = escapeHtml(status.service)
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="${CSP}">
<meta name="robots" content="noindex">
<title>${service} · fleetgate status</title>
<style>${STYLE}</style>
</head>
<body data-refresh-ms="${refreshMs}">
<header>
  <h1><span class="product">fleetgate ·</span> <span id="service">${service}</span></h1>
  <p id="updated">Loading…</p>
  <noscript><p class="banner">This page needs JavaScript to refresh. The same data is at /status with <code>Accept: application/json</code>.</p></noscript>
  <p id="stale-banner" class="banner warn" role="alert" hidden>Discovery is stale: the proxy is serving the last membership it knew while it cannot follow the registry.</p>
  <p id="fetch-error" class="banner bad" role="alert" hidden></p>
  <dl class="cards">
    <div class="card"><dt>Source</dt><dd id="source-kind"></dd></div>
    <div class="card"><dt>Discovery</dt><dd id="source-status"></dd></div>
    <div class="card"><dt>Membership</dt><dd id="membership"></dd></div>
    <div class="card"><dt>Proxy</dt><dd id="ready"></dd></div>
    <div class="card"><dt>Instances up</dt><dd><span id="count-up"></span><small id="count-other"></small></dd></div>
    <div class="card"><dt>Requests/s</dt><dd><span id="total-rate"></span><small>all instances, last 10 s</small></dd></div>
    <div class="card"><dt>Queued</dt><dd><span id="queue-waiting"></span><small id="queue-limit"></small></dd></div>
  </dl>
</header>
<main>
  <h2 id="instances-heading">Instances</h2>
  <div class="table-wrap">
    <table aria-labelledby="instances-heading" aria-describedby="table-note">
      <thead>
        <tr>
          <th scope="col">Instance</th>
          <th scope="col">State</th>
          <th scope="col" class="num">Requests/s</th>
          <th scope="col" class="num" title="5xx answers, failed connects, failures before an answer and responses cut off">Errors</th>
          <th scope="col" class="num">p50</th>
          <th scope="col" class="num">p99</th>
          <th scope="col" class="num">In flight</th>
          <th scope="col" class="num">Weight</th>
          <th scope="col">Last change</th>
        </tr>
      </thead>
      <tbody id="rows"></tbody>
    </table>
  </div>
</main>
<footer>
  <p id="table-note">Requests/s and errors (5xx answers, failed connects, resets and timeouts before an answer, and responses cut off, as a share of requests) are measured
  by this page over the last 10 s, from successive counts; p50 and p99 cover each instance's last 256 requests.
  Queued requests wait for a connection under the limit per instance, which each proxy process applies on its own.
  Machine-readable: /status (JSON) and /metrics (Prometheus).</p>
</footer>
<script type="application/json" id="initial-status">${scriptJson(status)}</script>
<script>${SCRIPT}</script>
</body>
</html>
`
}
