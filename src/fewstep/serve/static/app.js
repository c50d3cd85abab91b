// The fewstep serve page: plain DOM code, no framework (nothing is fetched from outside the server).
"use strict";
const $ = (id) => document.getElementById(id);
const S = { models: {}, limits: {}, uploads: [], job: null, timer: null, shown: 0 };

function message(text, isError = true) {
  const m = $("message");
  m.textContent = text || "";
  m.className = isError && text ? "error" : "";
}

async function api(path, opts) {
  let r;
  try { r = await fetch(path, opts); } catch (e) { return { error: "the server cannot be reached (is fewstep serve still running?)" }; }
  try { return await r.json(); } catch (e) { return { error: `server answered ${r.status}` }; }
}

function fmtBytes(n) { return n >= 1e6 ? (n / 1e6).toFixed(1) + " MB" : Math.round(n / 1e3) + " kB"; }

async function init() {
  const d = await api("/api/models");
  if (d.error) return message(d.error);
  S.limits = d.limits;
  $("device").textContent = "device: " + d.device;
  $("limits").textContent = `up to ${d.limits.max_files} files, ${fmtBytes(d.limits.max_bytes)} and ` +
    `${(d.limits.max_pixels / 1e6).toFixed(1)} megapixels each`;
  const sel = $("model"), hints = $("model-hint");
  for (const m of d.models) {
    S.models[m.name] = m;
    const o = document.createElement("option");
    o.value = m.name;
    o.textContent = m.present ? m.name : `${m.name} (weights missing)`;
    o.disabled = !m.present;
    o.title = m.present ? m.description : m.hint;
    if (m.name === d.default) o.selected = true;
    sel.appendChild(o);
    if (!m.present) {
      const li = document.createElement("li");
      li.textContent = `${m.name}: ${m.hint}`;
      hints.appendChild(li);
    }
  }
  $("missing").hidden = !hints.children.length;
  sel.addEventListener("change", showOptions);
  showOptions();
}

function showOptions() {
  const m = S.models[$("model").value];
  const form = $("options");
  form.replaceChildren();
  if (!m) return;
  $("model-desc").textContent = m.description;
  for (const o of m.options) {
    const label = document.createElement("label");
    label.textContent = o.name;
    label.htmlFor = "opt-" + o.name;
    label.title = o.help || "";
    let input;
    if (o.choices) {
      input = document.createElement("select");
      for (const c of o.choices) {
        const opt = document.createElement("option");
        opt.value = opt.textContent = c;
        if (c === o.default) opt.selected = true;
        input.appendChild(opt);
      }
    } else if (o.type === "bool") {
      input = document.createElement("input");
      input.type = "checkbox";
      input.checked = !!o.default;
    } else {
      input = document.createElement("input");
      input.type = o.type === "str" ? "text" : "number";
      if (o.type === "int") input.step = "1";
      if (o.type === "float") input.step = "any";
      if (o.min !== null) input.min = o.min;
      if (o.max !== null) input.max = o.max;
      if (o.default === null) input.placeholder = "model default";
      else input.value = o.default;
    }
    input.id = "opt-" + o.name;
    input.dataset.option = o.name;
    input.title = o.help || "";
    form.append(label, input);
  }
}

function optionValues() {
  const out = {};
  for (const el of document.querySelectorAll("[data-option]")) {
    out[el.dataset.option] = el.type === "checkbox" ? el.checked : el.value;
  }
  return out;
}

function renderFiles() {
  const ul = $("files");
  ul.replaceChildren();
  for (const u of S.uploads) {
    const li = document.createElement("li");
    li.className = u.error ? "error" : "";
    li.textContent = u.error ? u.error : u.id ? `${u.name}: ${u.width}×${u.height}` + (u.bit_depth === 16 ? ", 16-bit" : "") +
      (u.alpha ? ", alpha" : "") : `${u.name}: uploading…`;
    ul.appendChild(li);
  }
  $("run").disabled = !S.uploads.some((u) => u.id) || S.uploads.some((u) => !u.id && !u.error) || !!S.job;
}

async function addFiles(list) {
  const files = Array.from(list || []);
  if (!files.length) return;
  message("");
  if (files.length > S.limits.max_files) return message(`${files.length} files: at most ${S.limits.max_files} at once`);
  for (const u of S.uploads) if (u.url) URL.revokeObjectURL(u.url);
  S.uploads = files.map((f) => ({ name: f.name || "pasted.png", file: f }));
  renderFiles();
  const errors = [];
  await Promise.all(S.uploads.map(async (u) => {
    if (u.file.size > S.limits.max_bytes) {
      u.error = `${u.name}: file is ${u.file.size} bytes, above the limit of ${S.limits.max_bytes} bytes`;
    } else {
      const r = await api("/api/upload?name=" + encodeURIComponent(u.name), { method: "POST", body: u.file });
      if (r.error) u.error = r.error.startsWith(u.name) ? r.error : `${u.name}: ${r.error}`;
      else { Object.assign(u, r); u.url = URL.createObjectURL(u.file); }
    }
    if (u.error) errors.push(u.error);
    renderFiles();
  }));
  if (errors.length) message(errors.join("\n"));
}

async function run() {
  message("");
  const ok = S.uploads.filter((u) => u.id);
  const body = { model: $("model").value, options: optionValues(), seed: $("seed").value, uploads: ok.map((u) => u.id) };
  const j = await api("/api/jobs", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  if (j.error) return message(j.error);
  S.job = { id: j.id, inputs: ok };
  $("cancel").disabled = false;
  renderFiles();
  update(j);
  S.timer = setInterval(poll, 250);
}

async function poll() {
  if (!S.job) return;
  const j = await api(`/api/jobs/${S.job.id}`);
  if (j.error) { finish(); return message(j.error); }
  update(j);
}

function update(j) {
  const bar = $("progress"), status = $("status");
  if (j.state === "queued") {
    bar.removeAttribute("value");
    status.textContent = j.position > 0 ? `waiting in the queue: position ${j.position} (one job at a time on this device)` : "starting…";
    return;
  }
  bar.value = j.fraction;
  if (j.state === "running") {
    status.textContent = `${Math.round(j.fraction * 100)}% · ${j.label}`;
    return;
  }
  finish();
  if (j.state === "cancelled") { bar.value = 0; status.textContent = ""; return message("Cancelled."); }
  if (j.state === "error") { bar.value = 0; status.textContent = ""; return message(j.message); }
  status.textContent = `done in ${j.seconds.toFixed(1)} s`;
  if (j.message) message(j.message);
  showResults(j);
}

function finish() {
  clearInterval(S.timer);
  S.timer = null;
  S.lastInputs = S.job ? S.job.inputs : [];
  S.job = null;
  $("cancel").disabled = true;
  renderFiles();
}

function showResults(j) {
  S.results = j.results;
  const ul = $("results");
  ul.replaceChildren();
  if (j.results.length > 1) {
    j.results.forEach((r, i) => {
      const li = document.createElement("li");
      li.textContent = r.error ? r.error : `${r.name}: ${r.width}×${r.height}, ${r.seconds.toFixed(1)} s`;
      li.className = r.error ? "error" : "";
      if (!r.error) li.addEventListener("click", () => showResult(i));
      ul.appendChild(li);
    });
  }
  const zip = $("zip");
  zip.hidden = !j.zip;
  if (j.zip) zip.href = j.zip;
  $("result").hidden = false;
  const first = j.results.findIndex((r) => !r.error);
  if (first >= 0) showResult(first);
}

function showResult(i) {
  const r = S.results[i], inp = S.lastInputs[i];
  S.shown = i;
  Array.from($("results").children).forEach((li, k) => li.classList.toggle("current", k === i));
  $("before").src = inp && inp.url ? inp.url : "";
  const after = $("after");
  after.onload = applyZoom;
  after.src = r.url;
  $("result-info").textContent = `${r.name}: ${r.width}×${r.height} px, ${r.seconds.toFixed(1)} s`;
  const a = $("download");
  a.href = r.url;
  a.download = r.name;
}

function applyZoom() {
  const after = $("after"), z = $("zoom").value;
  if (!after.naturalWidth) return;
  const fit = Math.min(after.naturalWidth, $("viewport").clientWidth - 2);
  after.style.width = (z === "fit" ? fit : after.naturalWidth * Number(z)) + "px";
}

function slide() {
  const v = $("slider").value;
  $("after").style.clipPath = `inset(0 0 0 ${v}%)`;
  $("divider").style.left = v + "%";
}

window.addEventListener("DOMContentLoaded", () => {
  const drop = $("drop"), input = $("file-input");
  $("pick").addEventListener("click", () => input.click());
  input.addEventListener("change", () => { addFiles(input.files); input.value = ""; });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); addFiles(e.dataTransfer.files); });
  document.addEventListener("paste", (e) => { if (e.clipboardData && e.clipboardData.files.length) addFiles(e.clipboardData.files); });
  $("run").addEventListener("click", run);
  $("cancel").addEventListener("click", async () => { if (S.job) update(await api(`/api/jobs/${S.job.id}/cancel`, { method: "POST" })); });
  $("slider").addEventListener("input", slide);
  $("zoom").addEventListener("change", applyZoom);
  window.addEventListener("resize", applyZoom);
  // ctrl + wheel over the image zooms, like an image viewer
  $("viewport").addEventListener("wheel", (e) => {
    if (!e.ctrlKey) return;
    e.preventDefault();
    const zs = ["fit", "1", "2", "4"], sel = $("zoom");
    const k = Math.max(0, Math.min(zs.length - 1, zs.indexOf(sel.value) + (e.deltaY < 0 ? 1 : -1)));
    sel.value = zs[k];
    applyZoom();
  }, { passive: false });
  init();
});
