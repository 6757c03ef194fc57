// ioc-gateway live page. Loads the board once from /api/sensors, then follows /api/live
// (server-sent events). Incoming readings only update in-memory state; the DOM is touched once
// per animation frame for the rows that changed, so 1,000 sensors at 1 Hz stay smooth.
// Everything from the network is written with textContent (device names are untrusted).
'use strict';

(function () {
  // Staleness thresholds; `?amber_s=&red_s=` in the page URL override them.
  const params = new URLSearchParams(location.search);
  const seconds = (name, dflt) => {
    const v = Number(params.get(name));
    return (isFinite(v) && v > 0 ? v : dflt) * 1000;
  };
  const AMBER_MS = seconds('amber_s', 60);
  const RED_MS = seconds('red_s', 5 * 60);
  const HISTORY = 30;
  const CAMERA_SHOWN = 20;
  const SVG_NS = 'http://www.w3.org/2000/svg';

  let clockOffset = 0; // server clock minus this browser's clock, ms
  const sensors = new Map(); // key -> { data, row, cells, fieldEls, dirty }
  const sortedKeys = [];
  const dirty = new Set();
  let cameraEvents = [];
  let cameraDirty = false;
  let pendingStatus = null;
  let flushScheduled = false;
  let filterText = '';

  const $ = (id) => document.getElementById(id);
  const now = () => Date.now() + clockOffset;

  function fmtAge(ms) {
    if (ms == null || !isFinite(ms)) return '–';
    if (ms < 0) ms = 0;
    const s = Math.floor(ms / 1000);
    if (s < 60) return s + ' s';
    if (s < 3600) return Math.floor(s / 60) + ' min ' + (s % 60) + ' s';
    if (s < 86400) return Math.floor(s / 3600) + ' h ' + Math.floor((s % 3600) / 60) + ' min';
    return Math.floor(s / 86400) + ' d ' + Math.floor((s % 86400) / 3600) + ' h';
  }

  function fmtValue(v) {
    if (typeof v === 'number') {
      if (Number.isInteger(v)) return String(v);
      return String(Math.round(v * 1000) / 1000);
    }
    if (v === null || v === undefined) return '–';
    return String(v);
  }

  function fmtBytes(b) {
    if (b == null) return '–';
    if (b < 1024) return b + ' B';
    if (b < 1 << 20) return (b / 1024).toFixed(1) + ' KiB';
    return (b / (1 << 20)).toFixed(1) + ' MiB';
  }

  function fmtTime(ms) {
    const d = new Date(ms - clockOffset);
    return d.toLocaleTimeString();
  }

  function ageClass(ms) {
    if (ms >= RED_MS) return 'age red';
    if (ms >= AMBER_MS) return 'age amber';
    return 'age';
  }

  function schedule() {
    if (flushScheduled) return;
    flushScheduled = true;
    // requestAnimationFrame does not run in background tabs; the timeout keeps state fresh there.
    requestAnimationFrame(flush);
    setTimeout(flush, 250);
  }

  // ---- sensors -------------------------------------------------------------------------

  function matchesFilter(d) {
    if (!filterText) return true;
    const hay = (d.key + ' ' + d.measurement + ' ' + d.input).toLowerCase();
    return hay.indexOf(filterText) !== -1;
  }

  function insertSorted(key, row) {
    let lo = 0, hi = sortedKeys.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (sortedKeys[mid] < key) lo = mid + 1; else hi = mid;
    }
    const tbody = $('sensors').tBodies[0];
    const before = lo < sortedKeys.length ? sensors.get(sortedKeys[lo]).row : null;
    sortedKeys.splice(lo, 0, key);
    tbody.insertBefore(row, before);
  }

  function makeRow(d) {
    const row = document.createElement('tr');
    row.dataset.key = d.key;
    const cells = {};
    for (const name of ['sensor', 'measurement', 'input', 'age', 'fields']) {
      const td = document.createElement('td');
      td.className = name;
      row.appendChild(td);
      cells[name] = td;
    }
    cells.sensor.textContent = d.sensor_id || (d.tags && d.tags.camera) || d.key;
    cells.sensor.title = Object.entries(d.tags || {}).map(([k, v]) => k + '=' + v).join(', ');
    cells.measurement.textContent = d.measurement;
    return { row, cells, fieldEls: new Map(), ageText: '', ageCls: '' };
  }

  function sparkPoints(hist) {
    if (!hist || hist.length < 2) return '';
    let min = Infinity, max = -Infinity;
    for (const v of hist) { if (v < min) min = v; if (v > max) max = v; }
    const span = max - min || 1;
    const step = 60 / (hist.length - 1);
    return hist.map((v, i) => (i * step).toFixed(1) + ',' + (15 - ((v - min) / span) * 14).toFixed(1)).join(' ');
  }

  function renderFields(s) {
    const d = s.data;
    for (const name of Object.keys(d.fields).sort()) {
      const f = d.fields[name];
      let el = s.fieldEls.get(name);
      if (!el) {
        const span = document.createElement('span');
        span.className = 'field';
        span.dataset.field = name;
        const n = document.createElement('span');
        n.className = 'fname';
        n.textContent = name;
        const v = document.createElement('span');
        v.className = 'fval';
        const svg = document.createElementNS(SVG_NS, 'svg');
        svg.setAttribute('class', 'spark');
        svg.setAttribute('viewBox', '0 0 60 16');
        const line = document.createElementNS(SVG_NS, 'polyline');
        svg.appendChild(line);
        span.append(n, v, svg);
        s.cells.fields.appendChild(span);
        el = { v, line, text: null, points: null };
        s.fieldEls.set(name, el);
      }
      const text = fmtValue(f.value);
      if (text !== el.text) { el.v.textContent = text; el.text = text; }
      const pts = sparkPoints(f.history);
      if (pts !== el.points) { el.line.setAttribute('points', pts); el.points = pts; }
    }
  }

  function renderSensor(s) {
    if (s.cells.input.textContent !== s.data.input) s.cells.input.textContent = s.data.input;
    renderFields(s);
    renderAge(s, now());
    s.row.classList.toggle('hidden', !matchesFilter(s.data));
  }

  function renderAge(s, t) {
    const age = t - s.data.received_ms;
    const text = fmtAge(age);
    const cls = ageClass(age);
    if (text !== s.ageText) { s.cells.age.textContent = text; s.ageText = text; }
    if (cls !== s.ageCls) { s.cells.age.className = cls; s.ageCls = cls; }
  }

  function upsertSensor(d, fromSnapshot) {
    let s = sensors.get(d.key);
    // A snapshot can be a moment older than what the live stream already delivered.
    if (s && fromSnapshot && s.data.received_ms > d.received_ms) return;
    if (!s) {
      s = makeRow(d);
      s.data = d;
      sensors.set(d.key, s);
      insertSorted(d.key, s.row);
    } else {
      s.data = d;
    }
    dirty.add(d.key);
  }

  function applyReading(ev) {
    const s = sensors.get(ev.key);
    const d = s ? s.data : {
      key: ev.key, sensor_id: ev.sensor_id, measurement: ev.measurement,
      input: ev.input, tags: ev.tags, fields: {}
    };
    d.input = ev.input;
    d.ts_ms = ev.ts_ms;
    d.received_ms = ev.received_ms;
    for (const [name, value] of Object.entries(ev.fields)) {
      const f = d.fields[name] || (d.fields[name] = { value: null, history: [] });
      f.value = value;
      let n = null;
      if (typeof value === 'number') n = value;
      else if (typeof value === 'boolean') n = value ? 1 : 0;
      if (n !== null) {
        f.history.push(n);
        if (f.history.length > HISTORY) f.history.shift();
      }
    }
    upsertSensor(d);
    if (ev.measurement === 'camera_event') {
      cameraEvents.unshift(ev);
      if (cameraEvents.length > CAMERA_SHOWN) cameraEvents.length = CAMERA_SHOWN;
      cameraDirty = true;
    }
    schedule();
  }

  // ---- camera events -------------------------------------------------------------------

  // Merges a snapshot's events with those the stream already delivered (a snapshot can be a
  // moment older), newest first, without duplicates.
  function mergeCameraEvents(list) {
    const seen = new Set();
    const all = cameraEvents.concat(list).filter((ev) => {
      const id = ev.key + '|' + ev.ts_ms + '|' + JSON.stringify(ev.fields);
      if (seen.has(id)) return false;
      seen.add(id);
      return true;
    });
    all.sort((a, b) => b.received_ms - a.received_ms);
    cameraEvents = all.slice(0, CAMERA_SHOWN);
    cameraDirty = true;
  }

  function renderCamera() {
    const ol = $('camera-events');
    ol.textContent = '';
    if (cameraEvents.length === 0) {
      const li = document.createElement('li');
      li.className = 'empty';
      li.textContent = 'none yet';
      ol.appendChild(li);
      return;
    }
    for (const ev of cameraEvents) {
      const li = document.createElement('li');
      li.className = 'camera-event';
      const when = document.createElement('span');
      when.className = 'when';
      when.textContent = fmtTime(ev.received_ms);
      const cam = document.createElement('span');
      cam.className = 'cam';
      cam.textContent = (ev.tags && (ev.tags.camera || ev.tags.sensor_id)) || ev.key;
      const what = document.createElement('span');
      what.className = 'what';
      const tags = Object.entries(ev.tags || {}).filter(([k]) => k !== 'camera' && k !== 'sensor_id');
      const parts = Object.entries(ev.fields).map(([k, v]) => k + '=' + fmtValue(v))
        .concat(tags.map(([k, v]) => k + '=' + v));
      what.textContent = ' ' + parts.join(' ');
      li.append(when, cam, what);
      ol.appendChild(li);
    }
  }

  // ---- status --------------------------------------------------------------------------

  function setBadge(el, text, cls) {
    el.textContent = text;
    el.className = 'badge ' + cls;
  }

  function renderStatus(st) {
    $('gateway-id').textContent = st.gateway_id || '';
    if (st.build) $('build').textContent = st.build.version + ' (' + st.build.commit + ')';
    const ready = st.ready || { ready: false, reasons: [], warnings: [] };
    const warnings = ready.warnings || [];
    if (!ready.ready) setBadge($('ready'), 'NOT READY', 'bad');
    else if (warnings.length) setBadge($('ready'), 'ready, degraded', 'warn');
    else setBadge($('ready'), 'ready', 'ok');
    const reasons = $('reasons');
    reasons.textContent = '';
    for (const [list, cls] of [[ready.reasons || [], 'reason'], [warnings, 'warning']]) {
      for (const r of list) {
        const li = document.createElement('li');
        li.className = cls;
        li.dataset.code = r.code;
        li.textContent = r.message;
        reasons.appendChild(li);
      }
    }
    // Inputs: MQTT connections, serial ports and webhook inputs, a green or red dot each.
    const tbody = $('inputs').tBodies[0];
    tbody.textContent = '';
    const t = now();
    for (const [name, s] of Object.entries(st.inputs || {})) {
      const tr = document.createElement('tr');
      tr.dataset.input = name;
      tr.dataset.state = s.up ? 'up' : 'down';
      tr.className = s.up ? 'input-up' : 'input-down';
      const state = (s.up ? 'up' : 'DOWN') + ' for ' + fmtAge(t - s.since_ms);
      let frames = '';
      if (s.serial) {
        frames = s.serial.frames_good + ' good, ' + s.serial.frames_bad + ' bad';
        const why = Object.entries(s.serial.bad_by_reason || {}).map(([k, v]) => k + ' ' + v);
        if (why.length) frames += ' (' + why.join(', ') + ')';
      }
      const cells = [[name, ''], [s.kind, ''], [s.target, ''], [state, 'state ' + (s.up ? 'up' : 'down')],
        [frames, 'frames'], [s.last_error || '', 'error']];
      for (const [text, cls] of cells) {
        const td = document.createElement('td');
        td.textContent = text;
        if (cls) td.className = cls;
        tr.appendChild(td);
      }
      tbody.appendChild(tr);
    }
    const b = st.buffer || {};
    $('buffer-unsent').textContent = (b.unsent_lines ?? '–') + (b.urgent_unsent_lines ? ' (' + b.urgent_unsent_lines + ' urgent)' : '');
    $('buffer-oldest').textContent = b.oldest_unsent_age_ms == null ? 'nothing waiting' : fmtAge(b.oldest_unsent_age_ms);
    $('buffer-oldest').className = b.oldest_unsent_age_ms == null ? '' : ageClass(b.oldest_unsent_age_ms).replace('age', '');
    $('buffer-disk').textContent = fmtBytes(b.disk_bytes) + ' of ' + fmtBytes(b.max_bytes) + ' (' + Math.round((b.fill_ratio || 0) * 100) + ' %)';
    $('buffer-dropped').textContent = String(b.dropped_oldest_lines ?? '–');
    const s = st.store || {};
    $('store-last').textContent = s.last_success_ms ? fmtAge(t - s.last_success_ms) + ' ago' : 'never';
    $('store-batches').textContent = (s.batches_sent ?? 0) + ' (' + (s.lines_sent ?? 0) + ' lines)';
    $('store-error').textContent = s.last_error || 'none';
    $('store-error').className = s.last_error ? 'down' : '';
    // Each output: its own cursor's backlog, the URL in use, its last error.
    const outs = $('store-outputs');
    outs.textContent = '';
    for (const o of st.outputs || []) {
      const os = o.store || {};
      const line = document.createElement('div');
      let text = o.name + ': ' + (os.last_success_ms ? 'confirmed ' + fmtAge(t - os.last_success_ms) + ' ago' : 'never confirmed');
      text += ', ' + (o.unsent_lines ?? 0) + ' waiting';
      if (os.endpoint) text += ', via ' + os.endpoint;
      if (os.last_error) text += ', error: ' + os.last_error;
      line.textContent = text;
      if (os.last_error) line.className = 'down';
      outs.appendChild(line);
    }
  }

  // ---- frame flush ---------------------------------------------------------------------

  function flush() {
    if (!flushScheduled) return;
    flushScheduled = false;
    for (const key of dirty) {
      const s = sensors.get(key);
      if (s) renderSensor(s);
    }
    dirty.clear();
    if (cameraDirty) { renderCamera(); cameraDirty = false; }
    if (pendingStatus) { renderStatus(pendingStatus); pendingStatus = null; }
    $('sensor-count').textContent = String(sensors.size);
  }

  function tickAges() {
    const t = now();
    for (const s of sensors.values()) renderAge(s, t);
  }

  // ---- wiring --------------------------------------------------------------------------

  async function load() {
    const resp = await fetch('/api/sensors', { credentials: 'same-origin', cache: 'no-store' });
    if (!resp.ok) throw new Error('/api/sensors: HTTP ' + resp.status);
    const body = await resp.json();
    clockOffset = (body.now_ms || Date.now()) - Date.now();
    for (const d of body.sensors || []) upsertSensor(d, true);
    mergeCameraEvents(body.camera_events || []);
    // The board is fed while someone watches: say since when, if that was after the start.
    const since = body.live_since_ms;
    const note = $('live-since');
    if (since && body.started_ms && since > body.started_ms + 1000) {
      note.textContent = 'Live view since ' + new Date(since).toLocaleTimeString() +
        ': sensors appear as they report.';
      note.hidden = false;
    } else {
      note.hidden = true;
    }
    pendingStatus = body;
    flushScheduled = true;
    flush();
  }

  // Reloads the board after a gap in the stream (reconnect, or the server skipped us ahead).
  let resyncTimer = null;
  let connected = false;
  function resyncSoon(delay) {
    if (resyncTimer) return;
    resyncTimer = setTimeout(() => {
      resyncTimer = null;
      load()
        .then(() => { if (connected) setBadge($('conn'), 'live', 'ok'); })
        .catch((err) => setBadge($('conn'), 'cannot load: ' + err.message, 'bad'));
    }, delay);
  }

  function follow() {
    const es = new EventSource('/api/live?status=1');
    es.addEventListener('open', () => {
      connected = true;
      setBadge($('conn'), 'live', 'ok');
      resyncSoon(0);
    });
    es.addEventListener('error', () => {
      connected = false;
      setBadge($('conn'), 'reconnecting…', 'warn');
    });
    es.addEventListener('reading', (e) => {
      try { applyReading(JSON.parse(e.data)); } catch (err) { console.error(err); }
    });
    es.addEventListener('status', (e) => {
      try {
        const st = JSON.parse(e.data);
        clockOffset = (st.now_ms || Date.now()) - Date.now();
        pendingStatus = st;
        schedule();
      } catch (err) { console.error(err); }
    });
    es.addEventListener('lagged', () => {
      setBadge($('conn'), 'live (catching up)', 'warn');
      resyncSoon(500);
    });
  }

  $('filter').addEventListener('input', (e) => {
    filterText = e.target.value.trim().toLowerCase();
    for (const s of sensors.values()) s.row.classList.toggle('hidden', !matchesFilter(s.data));
  });

  setInterval(tickAges, 1000);
  load().catch((err) => {
    setBadge($('conn'), 'cannot load: ' + err.message, 'bad');
  }).finally(follow);
})();
