// The EMS operator page: sites → assets → live values with quality, thermal state and trend, alerts and faults.
// Reads only this origin's twin API (/v1/...). Data is rendered with textContent, never as markup; every
// fetch has a timeout and a size cap; one refresh runs at a time (the next is scheduled when it ends).
"use strict";

(() => {
  const ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
  const REFRESH_MS = 5000;
  const PLOT_EVERY = 6;             // refreshes between trend queries (30 s)
  const TREND_S = 1800;
  const STEP_S = 15;
  const FETCH_TIMEOUT_MS = 8000;
  const MAX_BYTES = 4 * 1024 * 1024;
  const MAX_ITEMS = 500;
  const COLOURS = ["#0969da", "#cf222e", "#1a7f37", "#8250df", "#bf8700", "#1b7c83", "#d1242f", "#57606a"];
  const THERMAL_LABELS = {
    top_oil_degC: ["top-oil (estimated)", "°C"], hot_spot_degC: ["hot-spot (estimated)", "°C"],
    ageing_rate: ["ageing rate V", ""], loss_of_life_h: ["loss of life", "h"], load_factor: ["load factor", ""],
    top_oil_residual_K: ["top-oil residual (measured − estimated)", "K"],
    hot_spot_limit_degC: ["hot-spot limit", "°C"], time_to_hot_spot_limit_s: ["time to hot-spot limit", "s"],
    restarts: ["model restarts", ""],
  };

  const state = { site: null, asset: null, tick: 0, plot: null, plotKey: "", twin: null };
  const $ = (id) => document.getElementById(id);

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  async function getJson(path) {
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), FETCH_TIMEOUT_MS);
    try {
      const resp = await fetch(path, { signal: ctl.signal, credentials: "same-origin", headers: { Accept: "application/json" } });
      const text = await resp.text();
      if (text.length > MAX_BYTES) throw new Error(`${path}: answer over ${MAX_BYTES} bytes`);
      let body;
      try { body = JSON.parse(text); } catch (e) { throw new Error(`${path}: not JSON (HTTP ${resp.status})`); }
      return { ok: resp.ok, status: resp.status, body };
    } finally {
      clearTimeout(timer);
    }
  }

  async function getOk(path) {
    const r = await getJson(path);
    if (!r.ok) throw new Error(`${path}: ${(r.body && r.body.error) || "HTTP " + r.status}`);
    return r.body;
  }

  function promString(value) {
    return JSON.stringify(String(value));      // a PromQL string literal: Go's escapes accept JSON's
  }

  function readHash() {
    const params = new URLSearchParams(location.hash.slice(1));
    const site = params.get("site");
    const asset = params.get("asset");
    state.site = site && ID.test(site) ? site : null;
    state.asset = state.site && asset && ID.test(asset) ? asset : null;
  }

  function select(site, asset) {
    const params = new URLSearchParams();
    if (site) params.set("site", site);
    if (asset) params.set("asset", asset);
    location.hash = params.toString();          // hashchange → readHash → refresh
  }

  function buttons(list, items, selected, onPick) {
    list.replaceChildren(...items.slice(0, MAX_ITEMS).filter((i) => typeof i === "string" && ID.test(i)).map((item) => {
      const li = el("li");
      const b = el("button", item);
      b.type = "button";
      b.setAttribute("aria-pressed", String(item === selected));
      b.addEventListener("click", () => onPick(item));
      li.append(b);
      return li;
    }));
  }

  function formatValue(v) {
    if (typeof v !== "number") return "—";
    const text = Math.abs(v) >= 1e6 || (v !== 0 && Math.abs(v) < 1e-3) ? v.toExponential(3)
      : v.toLocaleString("en", { maximumFractionDigits: 3 });
    return text === "-0" ? "0" : text;
  }

  function age(ms) {
    if (typeof ms !== "number") return "";
    const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
    return s < 120 ? `${s} s ago` : s < 7200 ? `${Math.round(s / 60)} min ago` : new Date(ms).toISOString();
  }

  function renderTwin(twin) {
    $("asset-title").textContent = twin ? `${twin.site} / ${twin.asset}` : "Pick a site and an asset";
    const points = twin && twin.points && typeof twin.points === "object" ? twin.points : {};
    const rows = Object.keys(points).sort().slice(0, MAX_ITEMS).map((name) => {
      const p = points[name] || {};
      const tr = el("tr");
      const quality = typeof p.quality === "string" ? p.quality : "";
      const fault = p.fault && typeof p.fault === "object" && typeof p.fault.code === "string" ? ` ${p.fault.code}` : "";
      tr.append(el("td", name), el("td", formatValue(p.value), "value"), el("td", typeof p.unit === "string" ? p.unit : ""),
        el("td", quality + fault, ID.test(quality) ? `quality-${quality}${fault ? " fault" : ""}` : ""), el("td", age(p.ts_ms), "muted"));
      tr.dataset.point = name;
      return tr;
    });
    $("points").tBodies[0].replaceChildren(...rows);
    const thermal = twin && twin.thermal && typeof twin.thermal === "object" ? twin.thermal : null;
    $("thermal").hidden = !thermal;
    if (thermal) {
      const items = [];
      for (const [key, [label, unit]] of Object.entries(THERMAL_LABELS)) {
        if (typeof thermal[key] !== "number") continue;
        const dd = el("dd", `${formatValue(thermal[key])}${unit ? " " + unit : ""}`);
        dd.dataset.field = key;
        items.push(el("dt", label), dd);
      }
      if (typeof thermal.model === "string") items.push(el("dt", "model"), el("dd", thermal.model));
      if (typeof thermal.updated_ms === "number") items.push(el("dt", "model updated"), el("dd", age(thermal.updated_ms)));
      $("thermal-values").replaceChildren(...items);
    }
  }

  function faultItem(code, text, severity, where) {
    const li = el("li", null, `severity-${ID.test(severity) ? severity : "unknown"}`);
    li.append(el("strong", code), document.createTextNode(` ${text}`), el("div", where, "muted"));
    return li;
  }

  async function renderFaults() {
    // The chosen asset's faults from its twin (a point's "fault": {code, text, severity, since_ms}), then the
    // site's other active faults from the TSDB; each (asset, point, code) once.
    const items = [];
    const seen = new Set();
    const add = (asset, point, code, text, severity) => {
      const key = `${asset}/${point}/${code}`;
      if (seen.has(key) || items.length >= MAX_ITEMS) return;
      seen.add(key);
      items.push(faultItem(code, text, severity, `${asset} ${point}`));
    };
    const show = () => $("faults").replaceChildren(...(items.length ? items : [el("li", "none", "muted")]));
    const points = state.twin && state.twin.points && typeof state.twin.points === "object" ? state.twin.points : {};
    for (const [point, p] of Object.entries(points)) {
      const f = p && p.fault;
      if (f && typeof f === "object") add(state.asset, point, String(f.code ?? ""), String(f.text ?? ""), String(f.severity ?? ""));
    }
    // The twin's faults show with its rows, before the site query: a newly picked asset never shows the last one's.
    show();
    if (state.site) {
      const q = `ems_twin_fault_active{site=${promString(state.site)}} == 1`;
      const body = await getOk(`/v1/query?${new URLSearchParams({ query: q })}`);
      for (const r of (body.data && Array.isArray(body.data.result) ? body.data.result : []).slice(0, MAX_ITEMS)) {
        const m = r.metric || {};
        add(m.asset || "", m.point || "", m.code || "", m.text || "", m.severity || "");
      }
    }
    show();
  }

  async function renderAlerts() {
    const r = await getJson("/v1/alerts");
    const body = r.body || {};
    const note = $("alerts-note");
    if (!r.ok) {
      note.textContent = body.error || `alerts unavailable (HTTP ${r.status})`;
      $("alerts").replaceChildren();
      return;
    }
    note.textContent = body.configured ? "" : "No Alertmanager configured: no alerts shown.";
    const alerts = Array.isArray(body.alerts) ? body.alerts.slice(0, MAX_ITEMS) : [];
    $("alerts").replaceChildren(...(alerts.length ? alerts.map((a) => {
      const labels = a.labels || {};
      const ann = a.annotations || {};
      const li = el("li", null, `severity-${ID.test(labels.severity || "") ? labels.severity : "unknown"}`);
      li.dataset.alertname = labels.alertname || "";
      const where = ["site", "asset", "device", "point"].filter((k) => labels[k]).map((k) => `${k}=${labels[k]}`).join(" ");
      li.append(el("strong", labels.alertname || "alert"), document.createTextNode(` ${labels.severity || ""}`),
        el("div", ann.summary || ""), el("div", `${where} since ${a.startsAt || "?"}`, "muted"));
      return li;
    }) : [el("li", body.configured ? "none" : "", "muted")]));
  }

  function trendQuery() {
    const points = state.twin && state.twin.points ? Object.values(state.twin.points) : [];
    const units = points.map((p) => p && p.unit).filter((u) => typeof u === "string" && u);
    const unit = units.includes("degC") ? "degC" : units.sort()[0];
    if (!unit) return null;
    const sel = `site=${promString(state.site)}, asset=${promString(state.asset)}`;
    let q = `ems_reading{${sel}, unit=${promString(unit)}}`;
    if (unit === "degC" && state.twin.thermal) {
      q += ` or label_replace(ems_twin_thermal_top_oil_celsius{${sel}}, "point", "top_oil_estimated", "", "")`
         + ` or label_replace(ems_twin_thermal_hot_spot_celsius{${sel}}, "point", "hot_spot_estimated", "", "")`;
    }
    return { q, unit };
  }

  async function renderTrend() {
    const t = state.site && state.asset ? trendQuery() : null;
    $("trend").hidden = !t;
    if (!t) return;
    const end = Math.floor(Date.now() / 1000);
    const params = new URLSearchParams({ query: t.q, start: String(end - TREND_S), end: String(end), step: String(STEP_S) });
    const body = await getOk(`/v1/query_range?${params}`);
    const result = (body.data && Array.isArray(body.data.result) ? body.data.result : []).slice(0, COLOURS.length);
    const xs = [];
    for (let x = end - TREND_S; x <= end; x += STEP_S) xs.push(x);
    const series = result.map((r) => {
      const byTime = new Map((r.values || []).map(([ts, v]) => [Math.round(Number(ts)), Number(v)]));
      const m = r.metric || {};
      return { label: `${m.point || "?"}${m.quality && m.quality !== "good" ? " (" + m.quality + ")" : ""}`,
               data: xs.map((x) => (byTime.has(x) ? byTime.get(x) : null)) };
    });
    $("trend-title").textContent = `Last 30 minutes (${t.unit})`;
    const key = `${state.site}/${state.asset}/` + series.map((s) => s.label).join("|");
    const data = [xs, ...series.map((s) => s.data)];
    if (state.plot && state.plotKey === key) {
      state.plot.setData(data);
      return;
    }
    if (state.plot) state.plot.destroy();
    state.plotKey = key;
    const width = Math.max(320, $("asset").clientWidth - 40);
    state.plot = new uPlot({
      width, height: 260, scales: { x: { time: true } },
      series: [{}, ...series.map((s, i) => ({ label: s.label, stroke: COLOURS[i], width: 1.5, spanGaps: true,
                                           points: { show: true, size: 5 } }))],
    }, data, $("plot"));
  }

  async function refresh() {
    const status = $("status");
    try {
      const sites = await getOk("/v1/sites");
      buttons($("sites"), Array.isArray(sites.sites) ? sites.sites : [], state.site, (s) => select(s, null));
      if (state.site) {
        const assets = await getOk(`/v1/assets/${encodeURIComponent(state.site)}`);
        buttons($("assets"), Array.isArray(assets.assets) ? assets.assets : [], state.asset, (a) => select(state.site, a));
      } else {
        $("assets").replaceChildren();
      }
      state.twin = state.site && state.asset
        ? await getOk(`/v1/assets/${encodeURIComponent(state.site)}/${encodeURIComponent(state.asset)}`) : null;
      renderTwin(state.twin);
      await Promise.all([renderAlerts(), renderFaults(), state.tick % PLOT_EVERY === 0 ? renderTrend() : null]);
      status.textContent = `updated ${new Date().toLocaleTimeString("en-GB")}`;
      status.className = "";
    } catch (err) {
      status.textContent = `refresh failed: ${err.message}`;
      status.className = "error";
    }
    state.tick += 1;
  }

  let timer = null;
  let running = false;
  let again = false;
  async function loop() {                       // one refresh at a time; a selection made meanwhile runs next
    if (running) { again = true; return; }
    running = true;
    clearTimeout(timer);
    try { await refresh(); } finally { running = false; }
    if (again) { again = false; loop(); return; }
    timer = setTimeout(loop, REFRESH_MS);
  }

  window.addEventListener("hashchange", () => { readHash(); state.tick = 0; loop(); });
  readHash();
  loop();
})();
