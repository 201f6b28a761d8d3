// enrichd dashboard: one metrics document in, the whole page out.
//
// Data comes from GET /v1/stream (Server-Sent Events, one `metrics` event a
// second) read with fetch() so the API key travels in the Authorization
// header, never in a URL (EventSource cannot send headers). When the stream
// is unavailable the page polls GET /v1/metrics instead. Everything from the
// server is written with textContent or SVG attributes: event fields are
// attacker-influenced and never become markup.
'use strict';

(() => {
  const KEY_STORE = 'enrichd.apiKey'; // sessionStorage only: gone with the tab
  const BUCKET_MS = 5000;
  const SPARK_WINDOW_MS = 5 * 60 * 1000;
  const EPM_WINDOW_MS = 15 * 60 * 1000;
  const STALL_MS = 5000; // no stream message for this long: reconnect
  const SVG_NS = 'http://www.w3.org/2000/svg';

  const $ = (id) => document.getElementById(id);
  const nf = new Intl.NumberFormat();
  const nf1 = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });
  const compact = new Intl.NumberFormat(undefined, { notation: 'compact', maximumFractionDigits: 1 });
  const num = (v) => (typeof v === 'number' && Number.isFinite(v) ? v : null);
  const count = (v) => (num(v) === null ? '–' : v >= 1e6 ? compact.format(v) : nf.format(Math.round(v)));
  const ms = (v) => (num(v) === null ? '–' : v < 10 ? v.toFixed(2) : v < 100 ? v.toFixed(1) : nf.format(Math.round(v)));
  const sleep = (t) => new Promise((r) => setTimeout(r, t));

  let apiKey = sessionStorage.getItem(KEY_STORE) || '';
  let topWindow = '5m';
  let last = null; // the latest metrics document
  let controller = null; // aborts the current stream
  let keyChanged = () => {};

  // ---- connection -------------------------------------------------------

  function headers(accept) {
    const h = { Accept: accept };
    if (apiKey) h.Authorization = 'Bearer ' + apiKey;
    return h;
  }

  function setMode(mode, text) {
    const conn = $('conn');
    conn.dataset.state = mode;
    $('conn-text').textContent = text;
    document.body.dataset.mode = mode;
  }

  // Reads the SSE stream until it ends or stalls. Resolves with why it ended
  // ('auth' for 401/403, 'unsupported' when there is no stream endpoint,
  // else 'network') and whether it delivered anything before that.
  async function stream() {
    controller = new AbortController();
    const { signal } = controller;
    let res;
    try {
      res = await fetch('/v1/stream', { headers: headers('text/event-stream'), signal, cache: 'no-store' });
    } catch (_) {
      return { why: 'network', delivered: false };
    }
    if (res.status === 401 || res.status === 403) return { why: 'auth', delivered: false };
    if (!res.ok || !res.body) return { why: res.status >= 500 ? 'network' : 'unsupported', delivered: false };
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = '';
    let delivered = false;
    let lastMessage = Date.now();
    // A stream that goes quiet (a buffering proxy, a stuck connection) is
    // dropped and replaced rather than trusted.
    const watchdog = setInterval(() => {
      if (Date.now() - lastMessage > STALL_MS) controller.abort();
    }, 1000);
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf = (buf + value).replace(/\r\n?/g, '\n');
        let end;
        while ((end = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, end);
          buf = buf.slice(end + 2);
          if (handleEvent(block)) {
            lastMessage = Date.now();
            delivered = true;
            setMode('live', 'live');
          }
        }
      }
    } catch (_) {
      // aborted or connection lost: fall through to reconnect
    } finally {
      clearInterval(watchdog);
    }
    return { why: 'network', delivered };
  }

  // One SSE block; true when it carried a metrics document.
  function handleEvent(block) {
    let event = 'message';
    const data = [];
    for (const line of block.split('\n')) {
      if (line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
      if (field === 'event') event = value;
      else if (field === 'data') data.push(value);
    }
    if (event !== 'metrics' || data.length === 0) return false;
    try {
      render(JSON.parse(data.join('\n')));
      return true;
    } catch (err) {
      console.warn('enrichd: unreadable metrics event', err);
      return false;
    }
  }

  async function poll() {
    let res;
    try {
      res = await fetch('/v1/metrics', { headers: headers('application/json'), cache: 'no-store' });
    } catch (_) {
      return 'network';
    }
    if (res.status === 401 || res.status === 403) return 'auth';
    if (!res.ok) return 'network';
    try {
      render(await res.json());
    } catch (_) {
      return 'network';
    }
    return 'ok';
  }

  function unreachable(retryMs) {
    setMode('unreachable', 'server unreachable');
    banner('error', `Server unreachable — retrying in ${Math.ceil(retryMs / 1000)} s. The figures below are from the last successful update.`);
  }

  function needKey() {
    setMode('auth', 'API key required');
    banner('auth', apiKey
      ? 'The server refused this API key. Enter a valid key above (it stays in this browser tab only).'
      : 'This server requires an API key for metrics. Enter it above (it stays in this browser tab only).');
    panelsNeedKey(apiKey ? 'API key refused: enter a valid key above' : 'API key missing: enter it above to see metrics');
  }

  // Before any figures arrived, the empty panels say why: the key, not a
  // lack of traffic. Figures already shown stay (as when the server is
  // unreachable); the banner says they are not live.
  function panelsNeedKey(text) {
    if (last) return;
    for (const id of ['epm-empty', 'feed-empty', 'chain-empty', 'outputs-empty']) {
      $(id).textContent = text;
      $(id).hidden = false;
    }
    for (const table of document.querySelectorAll('#tops table')) {
      const tr = el('tr');
      tr.appendChild(el('td', 'none', text));
      table.tBodies[0].replaceChildren(tr);
      table.dataset.rows = '0';
      drawn.delete(drawnId(table.tBodies[0]));
    }
  }

  // Stream first; poll while the stream is unavailable. Stream retries back
  // off (2 s doubling to 30 s) while it keeps failing, so a proxy that
  // breaks SSE costs one attempt now and then, not a reconnect storm; when
  // the server comes back after being unreachable the stream is retried at
  // once.
  async function run() {
    let retry = 0;
    for (;;) {
      const { why, delivered } = await stream();
      if (why === 'auth') {
        needKey();
        await new Promise((resolve) => { keyChanged = resolve; });
        retry = 0;
        continue;
      }
      retry = delivered ? 0 : why === 'unsupported' ? 30000 : Math.min(Math.max(2000, retry * 2), 30000);
      let until = Date.now() + retry;
      let backoff = 1000;
      let failed = false;
      for (;;) {
        const result = await poll();
        if (result === 'auth') { needKey(); break; }
        if (result === 'ok') {
          if (failed) until = Math.min(until, Date.now());
          failed = false;
          backoff = 1000;
          if (Date.now() >= until) break;
          setMode('polling', 'polling');
          await sleep(2000);
        } else {
          failed = true;
          unreachable(backoff);
          await sleep(backoff);
          backoff = Math.min(backoff * 2, 10000);
        }
      }
    }
  }

  function useKey(key) {
    apiKey = key;
    if (key) sessionStorage.setItem(KEY_STORE, key);
    else sessionStorage.removeItem(KEY_STORE);
    $('key-clear').hidden = !key;
    $('api-key').value = '';
    $('api-key').placeholder = key ? 'key set for this tab' : 'only if metrics need one';
    if (controller) controller.abort();
    keyChanged();
  }

  // ---- rendering --------------------------------------------------------

  function banner(kind, text) {
    const el = $('banner');
    if (!kind) {
      el.hidden = true;
      return;
    }
    el.hidden = false;
    el.dataset.kind = kind;
    el.textContent = text;
  }

  function setValue(id, value, text) {
    const el = $(id);
    const next = value === null || value === undefined ? '' : String(value);
    // Only new threat matches flash: a page open all day should be calm
    // unless something needs a look.
    if (el.dataset.value !== next && el.dataset.value !== '' && el.id === 'tile-threats-value') {
      el.classList.remove('bump');
      void el.offsetWidth; // restart the animation
      el.classList.add('bump');
    }
    el.dataset.value = next;
    if (!el.classList.contains('sub')) {
      el.textContent = text;
      return;
    }
    // A sub-line's parts ("a · b · c") are kept whole: the line wraps
    // between them (see app.css), never inside one.
    el.title = text;
    if (el.dataset.text === text) return;
    el.dataset.text = text;
    const parts = String(text).split(' · ');
    el.replaceChildren(...parts.flatMap((p, i) => (i ? [document.createTextNode(' · '), span(p)] : [span(p)])));
  }
  const span = (text) => el('span', null, text);

  // The server sends 5 minutes of history for every sparkline
  // (timeseries.last_5m), so a page opened on a busy server draws them all
  // at once. Only when a series is missing (an older server) is it sampled
  // here, once per 5 s bucket of server time, starting when the page opens.
  const sampled = new Map();
  function sample(name, tsMs, value) {
    if (num(value) === null) return [];
    const bucket = Math.floor(tsMs / BUCKET_MS) * BUCKET_MS;
    const series = sampled.get(name) || [];
    if (series.length && series[series.length - 1][0] === bucket) series[series.length - 1][1] = value;
    else series.push([bucket, value]);
    while (series.length && series[0][0] < bucket - SPARK_WINDOW_MS) series.shift();
    sampled.set(name, series);
    return series;
  }
  // A counter's per-bucket increase, from its sampled running total.
  function deltas(series) {
    const out = [];
    for (let i = 1; i < series.length; i++) out.push([series[i][0], Math.max(0, series[i][1] - series[i - 1][1])]);
    return out;
  }

  // Server series trimmed to the server's lifetime: buckets from before it
  // started are not "zero traffic", they are no data.
  function serverSeries(points, m, bucketMs) {
    if (!Array.isArray(points)) return null;
    const start = m.server_time_ms - (m.uptime_s || 0) * 1000;
    return points.filter((p) => Array.isArray(p) && p[0] + bucketMs > start);
  }

  // The x axis spans the data's life up to `windowMs` (at least 30 s):
  // a fresh server's first minute fills the tile instead of a sliver.
  function sparkline(id, points, nowMs, windowMs) {
    const svg = $(id);
    const vb = svg.viewBox.baseVal;
    const first = points.length ? points[0][0] : nowMs;
    const x0 = Math.max(nowMs - windowMs, Math.min(first, nowMs - 30000));
    draw(svg, points, x0, nowMs + BUCKET_MS / 2, vb.width, vb.height, 2);
    svg.dataset.points = String(points.length);
    svg.dataset.values = String(points.filter((p) => num(p[1]) !== null).length);
    svg.dataset.lastTs = points.length ? String(points[points.length - 1][0]) : '';
  }

  // Line and area for [[ts, value|null]...] over [x0, x1]; null breaks the line.
  function draw(svg, points, x0, x1, w, h, pad, yMax, bucketMs) {
    const values = points.map((p) => p[1]).filter((v) => num(v) !== null);
    const max = yMax || Math.max(1e-9, ...values) * 1.1;
    const x = (t) => ((t - x0) / (x1 - x0)) * w;
    const y = (v) => h - pad - (v / max) * (h - 2 * pad);
    let line = '';
    let area = '';
    let run = [];
    const flush = () => {
      if (run.length === 1) run.push([run[0][0] + 1.5, run[0][1]]); // a lone point still shows
      if (run.length) {
        line += 'M' + run.map(([a, b]) => a.toFixed(2) + ',' + b.toFixed(2)).join('L');
        area += `M${run[0][0].toFixed(2)},${h}L` + run.map(([a, b]) => a.toFixed(2) + ',' + b.toFixed(2)).join('L') + `L${run[run.length - 1][0].toFixed(2)},${h}Z`;
      }
      run = [];
    };
    for (const [t, v] of points) {
      if (num(v) === null) flush();
      else run.push([Math.min(w, Math.max(0, x(t + (bucketMs || BUCKET_MS) / 2))), y(v)]);
    }
    flush();
    let areaEl = svg.querySelector('path.area');
    let lineEl = svg.querySelector('path.line');
    if (!lineEl) {
      areaEl = svg.appendChild(document.createElementNS(SVG_NS, 'path'));
      areaEl.setAttribute('class', 'area');
      lineEl = svg.appendChild(document.createElementNS(SVG_NS, 'path'));
      lineEl.setAttribute('class', 'line');
    }
    areaEl.setAttribute('d', area);
    lineEl.setAttribute('d', line);
  }

  function niceMax(v) {
    if (v <= 0) return 10;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    // Steps whose quarters are round numbers (the chart has four gridlines).
    for (const f of [1, 2, 4, 6, 8, 10]) if (f * p >= v) return f * p;
    return 10 * p;
  }

  function epmChart(m) {
    const series15 = m.timeseries && m.timeseries.last_15m;
    const bucketMs = (series15 && series15.bucket_s ? series15.bucket_s : 60) * 1000;
    const points = serverSeries(series15 && series15.epm, m, bucketMs) || sample('epm', m.server_time_ms, m.rates && m.rates.epm_1m);
    const svg = $('chart-epm');
    const values = points.map((p) => p[1]).filter((v) => num(v) !== null);
    const peak = values.length ? Math.max(...values) : 0;
    const top = niceMax(peak * 1.05);
    if (!svg.querySelector('g.grid')) {
      const g = svg.appendChild(document.createElementNS(SVG_NS, 'g'));
      g.setAttribute('class', 'grid');
      for (let i = 1; i <= 4; i++) {
        const l = g.appendChild(document.createElementNS(SVG_NS, 'line'));
        l.setAttribute('x1', '0'); l.setAttribute('x2', '800');
        l.setAttribute('y1', String(180 - 4 - (i / 4) * 172)); l.setAttribute('y2', String(180 - 4 - (i / 4) * 172));
        l.setAttribute('class', 'grid');
      }
    }
    draw(svg, points, m.server_time_ms - EPM_WINDOW_MS, m.server_time_ms, 800, 180, 4, top, bucketMs);
    svg.dataset.points = String(points.length);
    $('epm-empty').hidden = peak > 0;
    $('epm-empty').textContent = 'no traffic yet';
    $('epm-peak').textContent = peak > 0 ? `peak ${count(peak)}/min` : '';
    const ylabels = $('epm-ylabels');
    if (ylabels.dataset.top !== String(top)) {
      ylabels.dataset.top = String(top);
      ylabels.replaceChildren(...[1, 2, 3, 4].map((i) => {
        const label = el('span', null, count((top * i) / 4));
        label.style.setProperty('--y', ((i / 4) * (172 / 180) * 100 + (4 / 180) * 100).toFixed(2) + '%');
        return label;
      }));
    }
    const axis = $('epm-axis');
    if (!axis.childElementCount) for (const t of ['−15 min', '−10 min', '−5 min', 'now']) axis.appendChild(document.createElement('span')).textContent = t;
  }

  function tiles(m) {
    const t = m.totals || {};
    const r = m.rates || {};
    const q = m.queue || {};
    const cls = m.requests_by_class || {};
    const now = m.server_time_ms;
    const s5 = (m.timeseries && m.timeseries.last_5m) || {};
    const bucketMs = ((m.timeseries && m.timeseries.bucket_s) || 5) * 1000;
    const series = (name, fallback) => serverSeries(s5[name], m, bucketMs) || fallback();

    setValue('tile-events-value', r.epm_1m, count(r.epm_1m));
    setValue('tile-events-sub', t.events, `${count(t.events)} total · ${nf1.format(num(r.eps_1m) || 0)}/s`);
    sparkline('spark-events', series('eps', () => sample('eps', now, m.eps)), now, SPARK_WINDOW_MS);

    // unique_sources is an estimate; its relative standard error rides along.
    const err = num(t.unique_sources_error);
    const active = num(t.sources_active_5m);
    setValue('tile-sources-value', t.unique_sources, count(t.unique_sources));
    setValue('tile-sources-sub', active, (active !== null ? `${count(active)} active in 5 min` : 'distinct source IPs')
      + (err ? ` · ±${nf1.format(err * 100)}%` : ''));
    sparkline('spark-sources', series('unique_sources', () => sample('sources', now, t.unique_sources)), now, SPARK_WINDOW_MS);

    setValue('tile-batches-value', t.batches, count(t.batches));
    setValue('tile-batches-sub', r.bpm_1m, `${count(r.bpm_1m)}/min · ${count(t.batches_rejected || 0)} rejected`);
    sparkline('spark-batches', series('bpm', () => deltas(sample('batches', now, t.batches))), now, SPARK_WINDOW_MS);

    setValue('tile-threats-value', t.threat_matches, count(t.threat_matches));
    setValue('tile-threats-sub', t.events_with_threats, `${count(t.events_with_threats)} events matched`);
    document.querySelector('[data-tile="threats"]').dataset.hot = String((t.threat_matches || 0) > 0);
    sparkline('spark-threats', series('threats', () => deltas(sample('threats', now, t.threat_matches))), now, SPARK_WINDOW_MS);

    const risk = t.risk_count ? num(t.avg_risk) : null;
    const riskSeries = series('avg_risk', () => sample('risk', now, risk));
    const recent = [...riskSeries].reverse().find((p) => num(p[1]) !== null);
    setValue('tile-risk-value', risk, risk === null ? '–' : nf1.format(risk));
    setValue('tile-risk-sub', t.risk_count, risk === null ? 'no scored events yet'
      : recent ? `latest 5 s: ${nf1.format(recent[1])}` : `${count(t.risk_count)} events scored`);
    $('tile-risk-sub').title = `${count(t.risk_count)} events scored`;
    document.querySelector('[data-tile="risk"]').dataset.hot = String(risk !== null && risk >= 50);
    sparkline('spark-risk', riskSeries, now, SPARK_WINDOW_MS);

    setValue('tile-lag-value', q.lag_ms_p95, ms(q.lag_ms_p95));
    setValue('tile-lag-sub', q.lag_ms_p99, `p50 ${ms(q.lag_ms_p50)} · p99 ${ms(q.lag_ms_p99)}` + (m.queue_depth ? ` · ${count(m.queue_depth)} queued` : ''));
    sparkline('spark-lag', series('lag_ms_p95', () => sample('lag', now, q.lag_ms_p95)), now, SPARK_WINDOW_MS);

    setValue('tile-requests-value', m.requests_total, count(m.requests_total));
    setValue('tile-requests-failed', m.requests_failed, `/ ${count(m.requests_failed)} failed`);
    setValue('tile-requests-sub', cls['5xx'], `${count(cls['4xx'])} 4xx · ${count(cls['5xx'])} 5xx`);
    sparkline('spark-requests', series('requests', () => deltas(sample('requests', now, m.requests_total))), now, SPARK_WINDOW_MS);
  }

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  // Replace a container's rows only when their content changed.
  const drawn = new Map();
  // (Keyed by the container's id, else its table's.)
  const drawnId = (container) => container.id || (container.closest('table') || container).id;
  function replaceRows(container, key, rows, build, shown = rows.length) {
    const sig = JSON.stringify(rows);
    const id = drawnId(container);
    if (drawn.get(id) === sig + key) return;
    drawn.set(id, sig + key);
    container.replaceChildren(...build());
    (container.closest('table') || container).dataset.rows = String(shown);
  }

  // Top lists are space-saving summaries: each entry's true count lies
  // between `count - error` and `count`. A count with an error shows as
  // "≈" with its range in the tooltip. An entry is within its error when
  // at least half its count may belong to other keys (count - error <=
  // error); a list made only of such entries ranks noise (a flood of
  // distinct values, none frequent), so it is replaced by a note; in a
  // list that does rank something, such entries are shown muted.
  const inexact = (r) => num(r.error) !== null && r.error > 0;
  const withinError = (r) => inexact(r) && (r.count || 0) - r.error <= r.error;
  // Public metrics without a key list what they emptied (`withheld`:
  // addresses, matched indicators, fact values); those tables say so
  // rather than "none in this window".
  const withheld = (m, path) => Array.isArray(m.withheld) && m.withheld.includes(path);
  const WITHHELD_TEXT = 'hidden without an API key: enter one above to see addresses and indicators';
  function fillTop(table, rows, m, keyText, hidden = false) {
    const max = Math.max(1, ...rows.map((r) => r.count || 0));
    const noise = rows.length > 0 && rows.every(withinError);
    table.dataset.noise = String(noise);
    table.dataset.withheld = String(hidden);
    replaceRows(table.tBodies[0], topWindow + hidden, rows, () => {
      if (!rows.length || noise) {
        const tr = el('tr');
        const text = hidden ? WITHHELD_TEXT
          : noise ? 'no value stands out: too many distinct values to rank (every count is within its error)'
          : (m.totals && m.totals.events) ? 'none in this window' : 'no traffic yet';
        tr.appendChild(el('td', hidden ? 'none withheld' : noise ? 'none noise' : 'none', text));
        return [tr];
      }
      return rows.map((r) => {
        const tr = el('tr');
        if (withinError(r)) tr.dataset.withinError = 'true';
        const key = el('td', 'key');
        key.style.setProperty('--share', ((100 * (r.count || 0)) / max).toFixed(1) + '%');
        key.appendChild(el('span', null, keyText(r.key)));
        if (r.label) key.appendChild(el('small', null, r.label));
        const n = el('td', 'num', (inexact(r) ? '≈' : '') + count(r.count));
        if (inexact(r)) {
          n.dataset.approx = 'true';
          n.title = `between ${count(Math.max(0, r.count - r.error))} and ${count(r.count)} (approximate)`;
        }
        tr.append(key, n);
        return tr;
      });
    }, noise ? 0 : rows.length);
  }

  // Lists of facts plugins declared with "top values" (top.<window>.facts),
  // one table each, named by the fact: created, filled and removed as the
  // server lists them. Names are server strings: textContent only.
  const factTops = new Map();
  function factTables(m, facts) {
    const tops = $('tops');
    const names = Object.keys(facts).filter((n) => Array.isArray(facts[n])).sort();
    for (const [name, box] of factTops) {
      if (!names.includes(name)) {
        box.remove();
        factTops.delete(name);
        drawn.delete('top-fact-' + name);
      }
    }
    for (const name of names) {
      let box = factTops.get(name);
      if (!box) {
        box = el('div', 'top');
        box.appendChild(el('h3', null, name.replace(/_/g, ' ')));
        const table = el('table');
        table.dataset.fact = name;
        table.dataset.rows = '0';
        table.appendChild(el('tbody'));
        table.tBodies[0].id = 'top-fact-' + name;
        box.appendChild(table);
        tops.appendChild(box);
        factTops.set(name, box);
      }
      fillTop(box.querySelector('table'), facts[name], m, String);
    }
  }

  function topTables(m) {
    const top = (m.top && m.top[topWindow]) || {};
    for (const name of ['sources', 'dst_countries', 'asns', 'indicators']) {
      const rows = Array.isArray(top[name]) ? top[name] : [];
      fillTop($('top-' + name), rows, m, name === 'asns' ? asLabel : String, withheld(m, 'top.' + name));
    }
    factTables(m, (top.facts && typeof top.facts === 'object') ? top.facts : {});
  }

  // "AS15169"; a bare number gets its organisation from the event
  // (`asn_label`) or else from the top-ASN tables when they know it.
  const asLabel = (key) => (/^\d+$/.test(String(key)) ? 'AS' + key : String(key));
  function asnText(asn, label, labels) {
    if (asn === null || asn === undefined || asn === '') return '–';
    if (typeof asn === 'object') return [asn.asn ? 'AS' + asn.asn : '', asn.org || ''].filter(Boolean).join(' ') || '–';
    const org = label || labels.get(String(asn));
    return asLabel(asn) + (org ? ' ' + org : '');
  }
  const hostPort = (ip, port) => (ip ? (String(ip).includes(':') ? `[${ip}]` : ip) + (num(port) !== null ? ':' + port : '') : '–');

  function feed(m) {
    const labels = new Map();
    for (const w of ['15m', '5m']) for (const a of (m.top && m.top[w] && m.top[w].asns) || []) if (a.label) labels.set(String(a.key), a.label);
    const events = Array.isArray(m.recent_high_risk) ? [...m.recent_high_risk] : [];
    events.sort((a, b) => (b.ts_ms || 0) - (a.ts_ms || 0));
    $('feed-empty').hidden = events.length > 0;
    $('feed-empty').textContent = 'no high-risk events yet';
    const threshold = num(m.recent_high_risk_threshold);
    $('feed-count').textContent = [threshold !== null ? `score ≥ ${threshold}` : '', events.length ? `${events.length} shown` : '',
      withheld(m, 'recent_high_risk.src_ip') ? 'addresses and indicators hidden without an API key' : '']
      .filter(Boolean).join(' · ');
    replaceRows($('feed').tBodies[0], '', events, () => events.map((e) => {
      const tr = el('tr');
      const time = el('td', 'addr', e.ts_ms ? new Date(e.ts_ms).toLocaleTimeString() : '–');
      if (e.ts_ms) time.title = new Date(e.ts_ms).toISOString();
      const score = el('span', 'score', e.risk_score);
      score.dataset.level = e.risk_score >= 80 ? 'critical' : 'high';
      const scoreTd = el('td');
      scoreTd.appendChild(score);
      const ind = el('td');
      for (const i of e.indicators || []) ind.appendChild(el('span', 'chip', i));
      const reasons = el('td');
      for (const r of e.reasons || []) reasons.appendChild(el('span', 'reason', r));
      tr.append(time, scoreTd, el('td', 'addr', hostPort(e.src_ip, e.src_port)), el('td', 'addr', hostPort(e.dst_ip, e.dst_port)),
        el('td', null, e.dst_country || '–'), el('td', 'asn', asnText(e.asn, e.asn_label, labels)), ind, reasons);
      return tr;
    }));
  }

  function ago(when, nowMs) {
    const t = typeof when === 'number' ? (when > 1e12 ? when : when * 1000) : Date.parse(when);
    if (!Number.isFinite(t)) return null;
    const s = Math.max(0, Math.round((nowMs - t) / 1000));
    const rel = s < 60 ? `${s} s ago` : s < 3600 ? `${Math.floor(s / 60)} min ago` : s < 86400 ? `${Math.floor(s / 3600)} h ago` : `${Math.floor(s / 86400)} d ago`;
    return { rel, abs: new Date(t).toISOString() };
  }

  function chain(m) {
    const stages = Array.isArray(m.enrichers) ? m.enrichers : [];
    $('chain-empty').hidden = stages.length > 0;
    $('chain-empty').textContent = 'no enrichers configured';
    // Rebuilt every second: the "loaded … ago" text moves with time.
    const list = $('chain');
    list.dataset.rows = String(stages.length);
    list.replaceChildren(...stages.map((s) => {
      const li = el('li');
      li.dataset.name = s.name || '';
      const name = el('span', 'name', s.name || s.plugin);
      if (s.plugin && s.plugin !== s.name) name.appendChild(el('small', null, s.plugin));
      const state = el('span', 'state', s.enabled === false ? 'disabled' : s.state || 'unknown');
      state.dataset.state = s.enabled === false ? 'disabled' : s.state || '';
      const parts = [];
      if (s.version) parts.push(s.version);
      if (num(s.generation) !== null) parts.push('gen ' + s.generation);
      const loaded = s.loaded_at ? ago(s.loaded_at, m.server_time_ms || Date.now()) : null;
      if (loaded) parts.push((num(s.generation) > 1 ? 'reloaded ' : 'loaded ') + loaded.rel);
      if (num(s.events) !== null) parts.push(count(s.events) + ' events');
      if (num(s.mean_ns_per_event) !== null && s.events) parts.push(nf.format(Math.round(s.mean_ns_per_event)) + ' ns/event');
      const detail = el('span', 'detail', parts.join(' · '));
      if (loaded) detail.title = 'loaded at ' + loaded.abs;
      li.append(name, state, detail);
      if (s.error) li.appendChild(el('span', 'err', s.error));
      return li;
    }));
  }

  // Delivery: per output its state, counters and backlog. `lost` and
  // dead-lettered events are shown in the threat colour: they need a look.
  function outputs(m) {
    const list = Array.isArray(m.outputs) ? m.outputs : [];
    $('outputs-empty').hidden = list.length > 0;
    $('outputs-empty').textContent = 'no outputs configured: events only go back in the HTTP answer';
    const ol = $('outputs');
    ol.dataset.rows = String(list.length);
    ol.replaceChildren(...list.map((o) => {
      const li = el('li');
      li.dataset.name = o.name || '';
      const name = el('span', 'name', o.name || o.type);
      if (o.type && o.type !== o.name) name.appendChild(el('small', null, o.type));
      const c = o.counters || {};
      const b = o.backlog || {};
      const waiting = num(b.events) > 0 && num(b.oldest_age_ms) > 10000;
      const stateText = o.state === 'running' && waiting ? 'backlog' : o.state || 'unknown';
      const state = el('span', 'state', stateText);
      state.dataset.state = stateText;
      const parts = [o.durability || ''];
      parts.push(count(c.sent || 0) + ' sent');
      if (num(b.events)) parts.push(count(b.events) + ' queued' + (b.oldest_age_ms ? ` (oldest ${Math.round(b.oldest_age_ms / 1000)} s)` : ''));
      if (c.retried) parts.push(count(c.retried) + ' retried');
      if (c.batch_latency_ms_mean) parts.push(nf.format(Math.round(c.batch_latency_ms_mean)) + ' ms/batch');
      li.append(name, state, el('span', 'detail', parts.filter(Boolean).join(' · ')));
      const bad = [];
      if (c.dead_lettered) bad.push(count(c.dead_lettered) + ' dead-lettered');
      if (c.lost) bad.push(count(c.lost) + ' lost');
      if (c.refused) bad.push(count(c.refused) + ' refused (backlog full)');
      if (c.last_error && c.last_error.message) bad.push('last error: ' + c.last_error.message);
      if (bad.length) li.appendChild(el('span', 'err', bad.join(' · ')));
      return li;
    }));
  }

  // Tables stages report about their data (a TI stage's feeds: indicators
  // live, hits, last hit), one wide panel each. Columns say how to read
  // their values (text, count, time); raw values stay in data-value.
  function stageTables(m) {
    const now = m.server_time_ms || Date.now();
    const tables = [];
    for (const s of Array.isArray(m.enrichers) ? m.enrichers : []) {
      if (s.enabled === false) continue;
      for (const t of Array.isArray(s.tables) ? s.tables : []) tables.push([s.name || s.plugin || '', t]);
    }
    const box = $('stage-tables');
    replaceRows(box, String(Math.floor(now / 1000)), tables, () => tables.map(([stage, t]) => {
      const columns = Array.isArray(t.columns) ? t.columns : [];
      const rows = Array.isArray(t.rows) ? t.rows : [];
      const section = el('section', 'panel wide stage-table');
      section.dataset.stage = stage;
      section.dataset.table = t.title || '';
      const header = el('header');
      header.append(el('h2', null, (t.title || 'Table') + ' · ' + stage));
      const table = el('table');
      table.dataset.rows = String(rows.length);
      const head = el('tr');
      for (const c of columns) head.appendChild(el('th', c.kind === 'count' ? 'num' : null, c.label));
      table.createTHead().appendChild(head);
      const body = table.createTBody();
      for (const r of rows) {
        const tr = el('tr');
        columns.forEach((c, i) => {
          const v = Array.isArray(r) ? r[i] : null;
          let td;
          if (c.kind === 'count') td = el('td', 'num', count(v));
          else if (c.kind === 'time') {
            const when = v === null || v === undefined ? null : ago(v, now);
            td = el('td', 'time', when ? when.rel : 'never');
            if (when) td.title = when.abs;
          } else td = el('td', 'text', v === null || v === undefined ? '–' : v);
          td.dataset.value = v === null || v === undefined ? '' : String(v);
          tr.appendChild(td);
        });
        body.appendChild(tr);
      }
      const scroll = el('div', 'scroll');
      scroll.appendChild(table);
      section.append(header, scroll);
      if (!rows.length) section.appendChild(el('p', 'empty', 'nothing loaded'));
      return section;
    }), tables.length);
  }

  function uptime(s) {
    if (num(s) === null) return '';
    const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), mi = Math.floor((s % 3600) / 60);
    return 'up ' + (d ? `${d}d ${h}h` : h ? `${h}h ${mi}m` : mi ? `${mi}m ${Math.floor(s % 60)}s` : `${Math.floor(s)}s`);
  }

  function render(m) {
    if (!m || typeof m !== 'object') return;
    if (num(m.server_time_ms) === null) m.server_time_ms = Date.now();
    last = m;
    const events = (m.totals && m.totals.events) || 0;
    if (events === 0) banner('empty', 'No traffic yet. Send events to POST /v1/ingest and they show up here within a second.');
    else banner(null);
    $('uptime').textContent = uptime(m.uptime_s);
    tiles(m);
    epmChart(m);
    topTables(m);
    feed(m);
    chain(m);
    outputs(m);
    stageTables(m);
  }

  // ---- wiring -----------------------------------------------------------

  $('key-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const key = $('api-key').value.trim();
    if (key) useKey(key); // clearing is the Forget button's job
  });
  $('key-clear').addEventListener('click', () => useKey(''));
  $('key-clear').hidden = !apiKey;
  if (apiKey) $('api-key').placeholder = 'key set for this tab';
  for (const b of document.querySelectorAll('.seg button')) {
    b.addEventListener('click', () => {
      topWindow = b.dataset.window;
      for (const o of document.querySelectorAll('.seg button')) o.setAttribute('aria-selected', String(o === b));
      if (last) topTables(last);
    });
  }
  fetch('/v1/version', { headers: { Accept: 'application/json' } })
    .then((r) => (r.ok ? r.json() : null))
    .then((v) => { if (v && v.version) $('uptime').title = `enrichd ${v.version} (${v.git_sha || 'unknown'})`; })
    .catch(() => {});
  run();
})();
