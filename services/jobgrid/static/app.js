// jobgrid dashboard: polls this node's JSON API every second; no framework, no build step.
"use strict";
const DEAD_KEEP_MS = 120000;   // a server that left the ring stays listed (as dead) this long
const known = new Map();       // id -> {entry, seen (ms), gone (ms|null)}
const NS = "http://www.w3.org/2000/svg";

async function get(path) {
  const r = await fetch(path, {credentials: "same-origin", headers: {Accept: "application/json"}});
  if (!r.ok) throw new Error(path + ": HTTP " + r.status);
  return r.json();
}
function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
function svg(tag, attrs) {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
}
function age(ts) { return ts ? ((Date.now() / 1000 - ts).toFixed(1) + " s ago") : "never"; }

function mergeServers(list) {
  const now = Date.now();
  const present = new Set();
  for (const s of list.servers) {
    present.add(s.id);
    known.set(s.id, {entry: s, seen: now, gone: null});
  }
  for (const [id, k] of known) {
    if (present.has(id)) continue;
    if (k.gone === null) k.gone = now;
    k.entry = Object.assign({}, k.entry, {status: "dead"});
    if (now - k.gone > DEAD_KEEP_MS) known.delete(id);
  }
  return [...known.values()].map(k => k.entry).sort((a, b) => a.location - b.location);
}

function drawRing(servers, me) {
  const g = document.getElementById("ring");
  g.replaceChildren(svg("circle", {cx: 0, cy: 0, r: 120, fill: "none", stroke: "#9ca3af", "stroke-width": 2}));
  for (const s of servers) {
    const deg = Number(s.location) / 2 ** 63 * 360;
    const rad = (deg - 90) * Math.PI / 180;
    const x = 120 * Math.cos(rad), y = 120 * Math.sin(rad);
    const dot = svg("circle", {cx: x.toFixed(1), cy: y.toFixed(1), r: s.id === me ? 10 : 8,
                               class: "server " + s.status, "data-id": s.id, "data-status": s.status});
    const title = svg("title"); title.textContent = s.id + " (" + s.status + ")"; dot.appendChild(title);
    g.appendChild(dot);
    const label = svg("text", {x: (x * 1.22).toFixed(1), y: (y * 1.22 + 4).toFixed(1), "text-anchor": "middle",
                               "font-size": 10});
    label.textContent = s.id.slice(0, 10);
    g.appendChild(label);
  }
}

function drawServers(servers, me) {
  const tb = document.querySelector("#servers tbody");
  tb.replaceChildren(...servers.map(s => {
    const tr = el("tr", {"data-id": s.id, "data-status": s.status, class: "server-row"});
    tr.append(el("td", {}, s.id + (s.id === me ? " (this)" : "")), el("td", {}, s.ip + ":" + s.port),
              el("td", {class: "active"}, s.active), el("td", {class: "backup"}, s.backup),
              el("td", {}, age(s.timestamp)), el("td", {class: "status " + s.status}, s.status));
    return tr;
  }));
}

function drawRunners(state) {
  const tb = document.querySelector("#runners tbody");
  tb.replaceChildren(...(state.runners || []).map(r => {
    const tr = el("tr", {class: "runner " + r.state});
    const job = el("td");
    if (r.job_id) job.appendChild(el("a", {href: "/job/" + encodeURIComponent(r.job_id)}, r.job_id));
    tr.append(el("td", {}, r.index), el("td", {}, r.pid ?? ""), el("td", {}, r.state), job);
    return tr;
  }));
}

function drawJobs(results) {
  const tb = document.querySelector("#jobs tbody");
  tb.replaceChildren(...results.slice(0, 30).map(r => {
    const tr = el("tr", {class: "job"});
    const a = el("a", {href: "/job/" + encodeURIComponent(r.job_id)}, r.job_id);
    const dur = r.finished_at && r.started_at ? (r.finished_at - r.started_at).toFixed(3) + " s" : "";
    const td = el("td"); td.appendChild(a);
    tr.append(td, el("td", {class: r.state}, r.state), el("td", {}, r.node), el("td", {}, r.attempts ?? ""),
              el("td", {}, dur));
    return tr;
  }));
}

function drawStats(stats) {
  document.getElementById("done-total").textContent = stats.done_total;
  document.getElementById("submitted").textContent = stats.submitted;
  const ps = stats.per_second;
  const last = ps.slice(-11, -1);
  document.getElementById("rate").textContent = (last.reduce((a, b) => a + b, 0) / 10).toFixed(1);
  const g = document.getElementById("chart");
  const max = Math.max(1, ...ps);
  const w = 300 / ps.length;
  g.replaceChildren(...ps.map((v, i) => svg("rect", {x: (i * w).toFixed(2), y: (80 - 78 * v / max).toFixed(1),
                                                       width: w.toFixed(2), height: (78 * v / max).toFixed(1),
                                                       fill: "#3b82f6"})));
}

async function refresh() {
  const status = document.getElementById("status");
  try {
    const [list, state, results, stats] = await Promise.all(
      [get("/servers"), get("/state"), get("/results"), get("/stats")]);
    document.getElementById("node").textContent = "node " + list.me;
    document.getElementById("epoch").textContent = "epoch " + list.epoch;
    const servers = mergeServers(list);
    drawRing(servers, list.me);
    drawServers(servers, list.me);
    const notice = document.getElementById("notice");
    notice.hidden = state.serving !== false;
    notice.textContent = state.serving === false ? "Not serving: " + state.reason : "";
    drawRunners(state);
    drawJobs(results);
    drawStats(stats);
    status.textContent = "updated " + new Date().toLocaleTimeString();
    document.body.dataset.updated = String(Date.now());
  } catch (e) {
    status.textContent = "error: " + e.message;
  }
}

refresh();
setInterval(refresh, 1000);
