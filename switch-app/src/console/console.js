// stitchd console: fills the tables from the `snapshot` events of /events (one a
// second), lists the `stitchd-event` events, and draws the last 60 s of per-port rates on
// two canvases. Text goes in through textContent only (names and MACs come from the
// switch, never parsed as HTML). Nothing is fetched from anywhere but this origin.
"use strict";

const HISTORY_MS = 60 * 1000;
const MAX_EVENTS = 200;
const COLORS = ["#3366cc", "#dc3912", "#ff9900", "#109618", "#990099", "#0099c6", "#dd4477", "#66aa00"];

// Per port id: [[time_ms, rx_pps, rx_mbps], ...] over the last minute.
const history = new Map();

function fmtRate(v) {
  if (v >= 1e6) return (v / 1e6).toFixed(2) + "M";
  if (v >= 1e3) return (v / 1e3).toFixed(1) + "k";
  return v.toFixed(0);
}
function mbit(bytesPerSec) { return (bytesPerSec * 8 / 1e6).toFixed(2); }
function fmtBytes(n) {
  if (n >= 1 << 30) return (n / (1 << 30)).toFixed(2) + " GiB";
  if (n >= 1 << 20) return (n / (1 << 20)).toFixed(2) + " MiB";
  if (n >= 1 << 10) return (n / (1 << 10)).toFixed(1) + " KiB";
  return n + " B";
}
function fmtAge(s) {
  if (s === null || s === undefined) return "-";
  if (s >= 3600) return Math.floor(s / 3600) + "h" + Math.floor((s % 3600) / 60) + "m";
  if (s >= 60) return Math.floor(s / 60) + "m" + (s % 60) + "s";
  return s + "s";
}

// Replaces the body of table `id` with `rows`: arrays of [text, className].
function fillTable(id, rows, keyOf) {
  const body = document.querySelector("#" + id + " tbody");
  const frag = document.createDocumentFragment();
  for (const r of rows) {
    const tr = document.createElement("tr");
    if (keyOf) tr.dataset.key = keyOf(r);
    for (const [text, cls] of r.cells) {
      const td = document.createElement("td");
      td.textContent = text;
      if (cls) td.className = cls;
      tr.appendChild(td);
    }
    frag.appendChild(tr);
  }
  body.replaceChildren(frag);
}

function renderPorts(ports) {
  fillTable("ports", ports.map(p => ({
    id: p.id,
    cells: [
      [String(p.id)], [p.name, "text"],
      [fmtRate(p.rx_pps), "num rx-pps"], [mbit(p.rx_bytes_per_sec), "num rx-mbps"],
      [fmtRate(p.tx_pps), "num tx-pps"], [mbit(p.tx_bytes_per_sec), "num tx-mbps"],
      [String(p.rx_packets), "num rx-packets"], [String(p.tx_packets), "num tx-packets"],
      [String(p.rx_dropped), "num"], [String(p.errors), "num"],
    ],
  })), r => r.id);
}

function renderWorkers(workers) {
  fillTable("workers", workers.map(w => {
    const reasons = Object.entries(w.drops).filter(([, n]) => n > 0).map(([k, n]) => k + " " + n);
    return {
      id: w.index,
      cells: [
        [String(w.index)], [String(w.lcore), "num"],
        [fmtRate(w.rx_pps), "num rx-pps"], [fmtRate(w.tx_pps), "num"],
        [fmtRate(w.stitched_pps), "num"],
        [w.cycles_per_packet === null ? "-" : fmtRate(w.cycles_per_packet), "num cycles"],
        [fmtRate(w.drops_per_sec), "num"],
        [reasons.length ? reasons.join(", ") : "none", "text drops"],
      ],
    };
  }), r => r.id);
}

function renderStitches(st) {
  const states = st.by_state ? Object.entries(st.by_state).map(([k, n]) => k + " " + n).join(", ") : "";
  document.getElementById("stitch-summary").textContent =
    st.total + " stitches" + (states ? " (" + states + ")" : "") +
    ", flow table " + st.flow_entries + "/" + st.flow_capacity +
    (st.rows.length < st.total ? ", too many to list" : "");
  fillTable("stitches", st.rows.map(s => ({
    id: s.id,
    cells: [
      [String(s.id)], [s.state, "text state-" + s.state], [s.leg_a, "text"], [s.leg_b, "text"],
      [String(s.packets), "num"], [fmtBytes(s.bytes), "num"], [mbit(s.bytes_per_sec), "num"],
      [fmtAge(s.age_secs), "num"],
    ],
  })), r => r.id);
}

function renderMacs(m) {
  document.getElementById("mac-summary").textContent =
    m.total + " entries" + (m.entries.length < m.total ? " (first " + m.entries.length + " shown)" : "");
  fillTable("macs", m.entries.map(e => ({
    mac: e.mac,
    cells: [[String(e.bridge)], [e.mac, "text mac"], [String(e.port), "num"],
      [e.static ? "static" : "learned", "text"], [e.static ? "-" : fmtAge(e.age_secs), "num"]],
  })), r => r.mac);
}

// Draws every port's series `index` (1: pkt/s, 2: Mbit/s) on canvas `id`.
function drawChart(id, legendId, index, now) {
  const canvas = document.getElementById(id);
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, left = 52, bottom = 18, top = 8;
  const plot = h - bottom - top;
  ctx.clearRect(0, 0, w, h);
  let max = 1, points = 0;
  for (const series of history.values()) {
    for (const p of series) max = Math.max(max, p[index]);
  }
  max *= 1.1;
  ctx.strokeStyle = "#e3e6ec";
  ctx.fillStyle = "#4a5263";
  ctx.font = "11px system-ui, sans-serif";
  for (let i = 0; i <= 4; i++) {
    const y = top + plot * i / 4 + 0.5;
    ctx.beginPath(); ctx.moveTo(left, y); ctx.lineTo(w, y); ctx.stroke();
    const tick = max * (4 - i) / 4;
    ctx.fillText(max < 10 ? tick.toFixed(2) : fmtRate(tick), 2, y + 4);
  }
  ctx.fillText("-60 s", left, h - 4);
  ctx.fillText("now", w - 24, h - 4);
  const legend = document.getElementById(legendId);
  legend.replaceChildren();
  let c = 0;
  for (const [port, series] of history) {
    const color = COLORS[c++ % COLORS.length];
    ctx.strokeStyle = color;
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    series.forEach((p, i) => {
      const x = left + (w - left) * (1 - (now - p[0]) / HISTORY_MS);
      const y = top + plot * (1 - p[index] / max);
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
      points++;
    });
    ctx.stroke();
    const item = document.createElement("span");
    const swatch = document.createElement("i");
    swatch.style.background = color;
    item.appendChild(swatch);
    item.appendChild(document.createTextNode("port " + port));
    legend.appendChild(item);
  }
  canvas.dataset.points = String(points);
}

function onSnapshot(s) {
  for (const p of s.ports) {
    if (!history.has(p.id)) history.set(p.id, []);
    const series = history.get(p.id);
    if (s.interval_secs > 0) series.push([s.time_ms, p.rx_pps, p.rx_bytes_per_sec * 8 / 1e6]);
    while (series.length && series[0][0] < s.time_ms - HISTORY_MS) series.shift();
  }
  renderPorts(s.ports);
  renderWorkers(s.workers);
  renderStitches(s.stitches);
  renderMacs(s.macs);
  drawChart("chart-pps", "legend-pps", 1, s.time_ms);
  drawChart("chart-mbps", "legend-mbps", 2, s.time_ms);
  document.body.dataset.snapshots = String(Number(document.body.dataset.snapshots) + 1);
  const status = document.getElementById("status");
  status.className = "status";
  status.textContent = "live, updated " + new Date(s.time_ms).toLocaleTimeString();
}

function onEvent(m) {
  const list = document.getElementById("events");
  const li = document.createElement("li");
  const ev = m.event || {};
  const rest = Object.entries(ev).filter(([k]) => k !== "event").map(([k, v]) => k + "=" + JSON.stringify(v));
  li.textContent = new Date(m.time_ms).toLocaleTimeString() + "  " + (ev.event || "?") + "  " + rest.join(" ");
  li.dataset.event = ev.event || "";
  list.insertBefore(li, list.firstChild);
  while (list.children.length > MAX_EVENTS) list.removeChild(list.lastChild);
}

const source = new EventSource("/events");
source.addEventListener("snapshot", e => onSnapshot(JSON.parse(e.data)));
source.addEventListener("stitchd-event", e => onEvent(JSON.parse(e.data)));
source.addEventListener("console-error", e => {
  const status = document.getElementById("status");
  status.className = "status down";
  status.textContent = JSON.parse(e.data);
});
source.onerror = () => {
  const status = document.getElementById("status");
  status.className = "status down";
  status.textContent = "disconnected, retrying";
};
