// filestore admin: refresh the statistics, the move job and the nodes every few seconds.
// The page works without this script; it only keeps the figures current.
"use strict";

const REFRESH_MS = 2000;
const UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];

function sizeText(n) {
  let value = n, step = 0;
  while (value >= 1024 && step < UNITS.length - 1) { value /= 1024; step++; }
  return step === 0 ? `${n.toLocaleString("en")} B`
                    : `${value.toLocaleString("en", {minimumFractionDigits: 1, maximumFractionDigits: 1})} ${UNITS[step]}`;
}

// A duration as stats.age_text and the page's template write it: 42 s, 12 min, 3.5 h, 2.0 d.
function ageText(seconds) {
  if (seconds < 60) return `${Math.floor(seconds)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min`;
  if (seconds < 86400) return `${(seconds / 3600).toFixed(1)} h`;
  return `${(seconds / 86400).toLocaleString("en", {minimumFractionDigits: 1, maximumFractionDigits: 1})} d`;
}

function format(value, kind) {
  if (value === null || value === undefined) return kind === "ago" || kind === "text" ? "none" : "n/a";
  if (kind === "size") return sizeText(value);
  if (kind === "ratio") return `${(value * 100).toFixed(1)}%`;
  if (kind === "ago") return `${ageText(value)} ago`;
  if (kind === "text") return String(value);
  if (kind === "rate") return value ? `${sizeText(value)}/s` : "no cap";
  return Number(value).toLocaleString("en");
}

function lookup(data, dotted) {
  return dotted.split(".").reduce((node, key) => (node == null ? undefined : node[key]), data);
}

let previous = null;

function showRate(stats) {
  const rate = document.getElementById("rate");
  if (!rate) return;
  if (previous) {
    const seconds = stats.time - previous.time;
    const bytes = stats.uploads.bytes - previous.uploads.bytes;
    const files = stats.uploads.done - previous.uploads.done;
    if (seconds > 0) rate.textContent = `${sizeText(Math.round(bytes / seconds))}/s, ${(files / seconds).toFixed(1)} files/s`;
  }
  previous = stats;
}

function showJob(job) {
  const box = document.getElementById("job");
  if (!box || !job) return;
  if (String(job.id) !== box.dataset.job) { window.location.reload(); return; }
  const set = (field, text) => {
    const node = box.querySelector(`[data-job-field="${field}"]`);
    if (node) node.textContent = text;
  };
  const active = job.state === "queued" || job.state === "running";
  set("state", job.state);
  set("scanning", job.scanning && active ? " (scanning)" : "");
  set("percent", `${Math.round((job.progress || 0) * 100)}%`);
  set("done", format(job.done));
  set("total", format(job.total));
  set("bytes", sizeText(job.bytes));
  set("total_bytes", sizeText(job.total_bytes));
  set("errors", format(job.errors));
  set("last_error", job.last_error || "");
  const bar = box.querySelector("progress");
  if (bar) bar.value = job.progress || 0;
  const cancel = box.querySelector("[data-job-cancel]");
  if (cancel && !active) cancel.remove();
}

function showErrors(errors) {
  const list = document.getElementById("errors");
  if (!list) return;
  list.replaceChildren(...(errors.length ? errors.map((e) => {
    const item = document.createElement("li");
    const code = document.createElement("code");
    code.textContent = e.path;
    item.append(code, ` (${e.op}${e.failed ? ", failed" : ""}): ${e.error}`);
    return item;
  }) : [Object.assign(document.createElement("li"), {className: "muted", textContent: "None."})]));
}

async function refresh(source) {
  try {
    const response = await fetch(source, {credentials: "same-origin", cache: "no-store"});
    if (response.status === 401) { window.location.reload(); return; }
    if (!response.ok) return;
    const stats = await response.json();
    for (const node of document.querySelectorAll("[data-stat]")) {
      node.textContent = format(lookup(stats, node.dataset.stat), node.dataset.format);
    }
    showRate(stats);
    showJob(stats.job);
    showErrors(stats.recent_errors || []);
    const updated = document.getElementById("updated");
    if (updated) updated.textContent = `Updated ${new Date().toLocaleTimeString("en-GB")}.`;
  } catch (error) {
    // The server is restarting or unreachable: try again at the next tick.
  }
}

// The nodes sharing the registry: the table rebuilt from /admin/api/cluster as the server renders
// it (dashboard.html). Names and URLs come from the registry: only ever set as text.
function nodeRow(node) {
  const element = (tag, props) => Object.assign(document.createElement(tag), props || {});
  const cell = (field, text) => {
    const td = element("td", {className: "num", textContent: text});
    td.dataset.nodeField = field;
    return td;
  };
  const row = element("tr");
  row.dataset.node = node.name;
  if (!node.alive) row.className = "dead";
  const name = element("span", {textContent: node.name});
  name.dataset.nodeField = "name";
  const head = element("th", {scope: "row"});
  head.append(name);
  if (node.this) head.append(" ", element("span", {className: "badge", textContent: "this node"}));
  const url = element("td");
  url.dataset.nodeField = "url";
  url.append(element("code", {textContent: node.url}));
  const state = element("span", {className: `state ${node.alive ? "alive" : "dead"}`,
                                 textContent: node.alive ? "alive" : "dead"});
  state.dataset.nodeField = "state";
  const stateCell = element("td");
  stateCell.append(state);
  row.append(head, url, stateCell,
             cell("heartbeat", format(Math.max(node.seconds_since_heartbeat, 0), "ago")),
             cell("local_files", format(node.local_files)),
             cell("local_bytes", sizeText(node.local_bytes)),
             cell("uploads_in_flight", format(node.uploads_in_flight)),
             cell("cache_bytes", sizeText(node.cache_bytes)));
  return row;
}

async function refreshNodes(box) {
  try {
    const response = await fetch(box.dataset.nodes, {credentials: "same-origin", cache: "no-store"});
    if (response.status === 401) { window.location.reload(); return; }
    if (!response.ok) return;
    const cluster = await response.json();
    const body = box.querySelector("tbody");
    if (body) body.replaceChildren(...cluster.nodes.map(nodeRow));
    const set = (field, text) => {
      const node = box.querySelector(`[data-nodes-field="${field}"]`);
      if (node) node.textContent = text;
    };
    set("alive", format(cluster.alive));
    set("count", format(cluster.nodes.length));
  } catch (error) {
    // The server is restarting or unreachable: try again at the next tick.
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const live = document.querySelector("[data-live]");
  if (!live) return;
  const source = live.dataset.live;
  const nodes = document.querySelector("[data-nodes]");
  const tick = () => {
    refresh(source);
    if (nodes) refreshNodes(nodes);
  };
  tick();
  setInterval(tick, REFRESH_MS);
});

// The charts of the last hour: drawn on the server as SVG; fetched again every sampling
// interval (the section's `data-every`, in ms) and swapped in whole.
const CHARTS_DEFAULT_MS = 10000;

function chartsEvery(box) {
  const inner = box.querySelector("[data-every]");
  const every = inner ? Number(inner.dataset.every) : CHARTS_DEFAULT_MS;
  return Number.isFinite(every) && every > 0 ? Math.max(every, 200) : CHARTS_DEFAULT_MS;
}

async function refreshCharts(box) {
  try {
    const response = await fetch(box.dataset.charts, {credentials: "same-origin", cache: "no-store"});
    if (response.status === 401) { window.location.reload(); return; }
    if (response.ok) box.innerHTML = await response.text();
  } catch (error) {
    // The server is restarting or unreachable: try again at the next tick.
  }
  setTimeout(() => refreshCharts(box), chartsEvery(box));
}

document.addEventListener("DOMContentLoaded", () => {
  const box = document.querySelector("[data-charts]");
  if (box) setTimeout(() => refreshCharts(box), chartsEvery(box));
});
