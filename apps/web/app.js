// edge phone app: every ONNX artifact `edge serve DIR` offers, on the backend of your choice (wasm,
// webgpu, webnn), classifying the live camera or a digit drawn on the pad, with a benchmark whose cell
// joins the desktop run's results.json. window.edgeApp holds the state (the browser test reads it).
import { desktopCells, downloadJson, histogramSvg, timeSession } from "./bench.js";
import { makeCamera, WINDOW } from "./camera.js";
import { concreteShape, loadModel, median, ort, preprocessFrame, probeBackends, topK, warmLoadMs } from "./infer.js";
import { isDigitsModel, makePad, strokesToInput } from "./pad.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const CACHE = "edge-web-v2";
const fmt = (v, d = 2) => (typeof v === "number" && isFinite(v) ? v.toFixed(d) : "–");
const mb = (n) => `${(n / 1e6).toFixed(n < 1e6 ? 2 : 1)} MB`;
const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[c]));

const state = {
  ready: false, catalogue: null, artifact: null, manifest: null, session: null, backend: null, want: null,
  fallback: null, placement: null, backends: null, coldMs: null, warmMs: null, bytes: null, externalData: [],
  last: null, timing: { camera: { run: [], frame: [] }, pad: { run: [], frame: [] } }, bench: null, shared: null,
  cached: [], view: "camera", loading: null,
};
window.edgeApp = state;
state.ort = ort;   // for the browser test and the console

function status(text, kind = "") { const el = $("status"); el.textContent = text; el.dataset.kind = kind; }

// --------------------------------------------------------------------------------------- inference

async function classify(source, data) {
  const { session, manifest } = state;
  const shape = concreteShape(manifest.inputs[0]);
  const feeds = { [session.inputNames[0]]: new ort.Tensor("float32", data, shape) };
  const t0 = performance.now();
  const out = await session.run(feeds);
  const runMs = performance.now() - t0;
  const logits = out[session.outputNames[0]].data;
  const top5 = topK(logits, manifest.model?.labels, 5);
  return { source, feeds, runMs, top5, logits: Array.from(logits), input: data };
}

function record(source, r, t0) {
  renderTop5($(source === "pad" ? "pad-top5" : "cam-top5"), r.top5);
  const frameMs = performance.now() - t0;   // preprocessing + session.run + top-5 + drawing it
  const t = state.timing[source];
  t.run.push(r.runMs); t.frame.push(frameMs);
  for (const a of [t.run, t.frame]) while (a.length > 200) a.shift();
  state.last = { source, top5: r.top5, logits: r.logits, input: Array.from(r.input), runMs: r.runMs, frameMs,
    backend: state.backend, artifact: state.artifact.id };
  state.lastFeeds = r.feeds;
}

function renderTop5(el, top5) {
  el.innerHTML = top5.map((t, i) => `<li class="${i ? "" : "best"}"><span class="lbl">${esc(t.label)}</span>` +
    `<span class="bar"><i style="width:${(t.prob * 100).toFixed(1)}%"></i></span><span class="pct">${(t.prob * 100).toFixed(1)}%</span></li>`).join("");
}

// ----------------------------------------------------------------------------------- model loading

async function cacheForOffline(base, manifest) {
  if (!("caches" in self)) return;
  try {
    const c = await caches.open(CACHE);
    const urls = [base + "manifest.json", ...Object.keys(manifest.files).map((f) => base + f)];
    await c.addAll(urls.filter((u) => !state.cached.includes(u)));
    state.cached = [...new Set([...state.cached, ...urls])];
  } catch (e) { /* no cache storage (private mode): the page still works online */ }
  renderOffline();
}

async function loadArtifact(id, ep) {
  const art = state.catalogue.artifacts.find((a) => a.id === id) || state.catalogue.artifacts[0];
  const cameraWasOn = camera?.running;
  camera?.stop(false);
  state.ready = false; state.want = ep;
  status(`loading ${art.model} ${art.precision} on ${ep}...`);
  state.loading = (async () => {
    const manifest = await (await fetch(art.url + "manifest.json")).json();
    if (state.session) await state.session.release().catch(() => {});
    const m = await loadModel(art.url, manifest, ep);
    Object.assign(state, { artifact: art, manifest, session: m.session, backend: m.backend, fallback: m.fallback,
      placement: m.placement, coldMs: m.coldMs, warmMs: null, bytes: m.bytes, externalData: m.externalData, bench: null,
      last: null, timing: { camera: { run: [], frame: [] }, pad: { run: [], frame: [] } } });
    localStorage.setItem("edge.choice", JSON.stringify({ id: art.id, ep }));
    renderModel();
    await cacheForOffline(art.url, manifest);
    state.ready = true;
    status(`ready: ${art.model} ${art.precision} on ${m.backend}, loaded in ${fmt(m.coldMs, 0)} ms` +
      (m.fallback ? " (fell back to wasm)" : ""), m.fallback ? "warn" : "ok");
    if (pad.strokes.length) await onStrokes(pad.strokes);
    if (cameraWasOn) await camera.start();
  })();
  try { await state.loading; } catch (e) { status(`could not load ${art.model} ${art.precision}: ${e.message || e}`, "error"); }
}

function renderModel() {
  const { artifact: a, backend } = state;
  $("chip").textContent = `${a.model} · ${a.precision} · ${backend}`;
  $("artifact").value = a.id;
  for (const b of document.querySelectorAll("#backends button")) b.setAttribute("aria-pressed", String(b.dataset.ep === backend));
  const notes = [];
  for (const [ep, info] of Object.entries(state.backends)) if (!info.available) notes.push(`<li class="off"><b>${ep}</b> unavailable: ${esc(info.reason)}</li>`);
  if (state.fallback) notes.push(`<li class="warn">${esc(state.fallback)}</li>`);
  if (state.placement?.length) notes.push(`<li class="warn">not on ${esc(state.backend)} (ran on the CPU): ` +
    state.placement.map((p) => `${esc(p.op)}×${p.count}`).join(", ") + "</li>");
  else if (state.placement && state.backend !== "wasm") notes.push(`<li>every node ran on ${esc(state.backend)}</li>`);
  $("backend-note").innerHTML = notes.join("");
  const digits = isDigitsModel(state.manifest);
  $("tab-draw").disabled = !digits;
  $("tab-draw").title = digits ? "" : "the drawing pad is for the digits models";
  if (!digits && state.view === "draw") showView("camera");
  $("desc").textContent = `${a.path} · ${mb(a.size_bytes)} · input ${a.input.shape.join("×")}` +
    (a.accuracy != null ? ` · test accuracy ${(a.accuracy * 100).toFixed(1)}%` : "");
}

function renderPickers() {
  const sel = $("artifact");
  sel.innerHTML = state.catalogue.artifacts.map((a) => `<option value="${esc(a.id)}">${esc(a.model)} · ${esc(a.precision)} · ${mb(a.size_bytes)}</option>`).join("");
  if (state.catalogue.skipped.length) sel.title = state.catalogue.skipped.map((s) => `${s.path}: ${s.reason}`).join("\n");
  $("backends").innerHTML = Object.entries(state.backends).map(([ep, info]) =>
    `<button type="button" data-ep="${ep}" ${info.available ? "" : "disabled"} title="${esc(info.available ? info.detail : info.reason)}">` +
    `${ep}<small>${esc(info.available ? info.detail : "unavailable")}</small></button>`).join("");
}

// ------------------------------------------------------------------------------------------- views

function showView(name) {
  state.view = name;
  for (const v of document.querySelectorAll(".view")) v.hidden = v.id !== `view-${name}`;
  for (const t of document.querySelectorAll(".tabs button")) t.setAttribute("aria-selected", String(t.dataset.view === name));
  if (name !== "camera" && camera.running) toggleCamera();
  if (name === "draw") pad.redraw();
}

async function toggleCamera() {
  if (camera.running) { camera.stop(); $("cam-toggle").textContent = "Start camera"; return; }
  try {
    await camera.start();
    $("cam-toggle").textContent = "Stop camera";
    status(`camera on (${state.backend})`, "ok");
  } catch (e) { status(`camera unavailable: ${e.message || e}; pick a photo instead`, "error"); }
}

async function onFrame(video, w, h) {
  if (!state.ready) return;
  const t0 = performance.now();
  const data = preprocessFrame(video, w, h, state.manifest.model?.preprocessing || {}, concreteShape(state.manifest.inputs[0]), $("scratch"));
  record("camera", await classify("camera", data), t0);
}

function onCameraStats(s) {
  if (s.error) return status(`camera loop: ${s.error}`, "error");
  if (s.paused) return status("camera paused while the page is hidden");
  const t = state.timing.camera;
  $("cam-lat").textContent = `${fmt(median(t.frame.slice(-WINDOW)), 1)} ms p50`;
  $("cam-fps").textContent = `${fmt(s.fps, 1)} fps`;
}

// One pad inference at a time: strokes that arrive meanwhile are classified when it finishes (latest wins).
let padInflight = 0, padAgain = false;
state.padIdle = () => padInflight === 0 && pad.idle();
state.drawStrokes = (strokes) => { pad.set(strokes); return onStrokes(pad.strokes); };   // stored strokes (tests)

async function onStrokes(strokes) {
  if (padInflight) { padAgain = true; return; }
  padInflight += 1;
  try {
    do { padAgain = false; await classifyStrokes(strokes); } while (padAgain);
  } finally { padInflight -= 1; }
}

async function classifyStrokes(strokes) {
  if (!state.ready || !isDigitsModel(state.manifest)) return;
  if (!strokes.length) { $("pad-top5").innerHTML = ""; $("pad-lat").textContent = ""; return; }
  const t0 = performance.now();
  const [, , H, W] = concreteShape(state.manifest.inputs[0]);
  const data = strokesToInput(strokes, state.manifest.model?.preprocessing || {}, H, W, $("scratch"));
  const r = await classify("pad", data);
  record("pad", r, t0);
  $("pad-lat").textContent = `${fmt(r.runMs, 2)} ms run · ${fmt(state.last.frameMs, 2)} ms frame`;
}

async function onPhoto(file) {
  const bitmap = await createImageBitmap(file);
  const t0 = performance.now();
  const data = preprocessFrame(bitmap, bitmap.width, bitmap.height, state.manifest.model?.preprocessing || {}, concreteShape(state.manifest.inputs[0]), $("scratch"));
  record("camera", await classify("photo", data), t0);
}

// --------------------------------------------------------------------------------------- benchmark

async function benchmark() {
  const warmup = Math.max(0, parseInt($("warmup").value, 10) || 0);
  const iters = Math.max(1, Math.min(10000, parseInt($("iters").value, 10) || 1));
  $("bench").disabled = true;
  try {
    let feeds = state.lastFeeds;
    if (!feeds) {   // nothing classified yet: a fixed input of the right shape
      const shape = concreteShape(state.manifest.inputs[0]);
      const d = new Float32Array(shape.reduce((a, b) => a * b, 1)).map((_, i) => Math.sin(i * 12.9898) * 0.5);
      feeds = { [state.session.inputNames[0]]: new ort.Tensor("float32", d, shape) };
    }
    status("measuring warm load...");
    state.warmMs = await warmLoadMs(state.bytes, state.backend, state.externalData);
    const r = await timeSession(state.session, feeds, { warmup, iters, onProgress: (i, n) => status(`timing ${i}/${n}...`) });
    state.bench = { ...r, warmup, iters, backend: state.backend, load_ms: state.coldMs, warm_load_ms: state.warmMs };
    renderBench();
    const results = await fetch("/api/results").then((x) => x.json()).catch(() => ({ cells: [] }));
    state.desktop = desktopCells(results, state.artifact, navigator.userAgent);
    renderDesktop();
    status(`benchmark done: p50 ${fmt(r.p50_ms, 3)} ms on ${state.backend}; share it or download it`, "ok");
  } catch (e) { status(`benchmark failed: ${e.message || e}`, "error"); }
  $("bench").disabled = false;
}

function renderBench() {
  const b = state.bench;
  const tiles = [["cold load", b.load_ms], ["warm load", b.warm_load_ms], ["first inference", b.first_inference_ms],
    ["p50", b.p50_ms], ["p90", b.p90_ms], ["p99", b.p99_ms]];
  $("bench-stats").innerHTML = tiles.map(([k, v]) => `<div><small>${k}</small><b>${fmt(v, v > 100 ? 0 : 2)}</b><small>ms</small></div>`).join("");
  $("hist").innerHTML = histogramSvg(b.samples);
  $("share").disabled = $("download").disabled = false;
}

function renderDesktop() {
  const rows = state.desktop.slice(0, 6).map((c) => `<tr><td>${esc(c.target)}/${esc(c.precision)}<small>${esc(c.runtime || "")}</small></td>` +
    `<td>${fmt(c.p50_ms, 3)}</td><td>${fmt(state.bench.p50_ms / c.p50_ms, 1)}×</td></tr>`);
  $("desktop").innerHTML = rows.length ? `<tr><th>desktop run (${esc(state.artifact.model)})</th><th>p50 ms</th><th>this / it</th></tr>` +
    `<tr class="me"><td>this device: browser/${esc(state.artifact.precision)}<small>onnxruntime-web/${esc(state.backend)}</small></td>` +
    `<td>${fmt(state.bench.p50_ms, 3)}</td><td>1.0×</td></tr>${rows.join("")}`
    : `<tr><td>no desktop cell of ${esc(state.artifact.model)} in edge serve's results.json yet (run edge bench first)</td></tr>`;
}

function shareBody() {
  const b = state.bench;
  return { artifact: state.artifact.id, backend: b.backend, warmup: b.warmup, iters: b.iters, samples_ms: b.samples,
    first_inference_ms: b.first_inference_ms, load_ms: b.load_ms, warm_load_ms: b.warm_load_ms, fallback: state.fallback,
    user_agent: navigator.userAgent, hardware_concurrency: navigator.hardwareConcurrency || null,
    device_memory_gb: navigator.deviceMemory || null, screen: `${screen.width}x${screen.height}@${devicePixelRatio}`,
    threads: ort.env.wasm.numThreads || null, cross_origin_isolated: self.crossOriginIsolated === true };
}

async function share() {
  status("posting the cell to edge serve...");
  try {
    const resp = await fetch("/api/results", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(shareBody()) });
    const reply = await resp.json();
    if (!resp.ok) throw new Error(reply.error || resp.statusText);
    state.shared = reply.cell;
    status(`posted: p50 ${fmt(reply.cell.p50_ms, 3)} ms joins ${reply.results}`, "ok");
  } catch (e) { status(`not posted (${e.message || e}); download the JSON instead`, "error"); }
}

// ------------------------------------------------------------------------------------ offline, install

function renderOffline() {
  const sw = navigator.serviceWorker?.controller ? "service worker on" : "service worker starting";
  const n = state.catalogue?.artifacts.filter((a) => state.cached.some((u) => u.startsWith(a.url))).length || 0;
  $("offline").firstChild.textContent = `${navigator.onLine ? "online" : "offline"} · ${sw} · app, runtime and ${n} artifact${n === 1 ? "" : "s"} kept for offline use`;
}

let camera, pad;

async function main() {
  if ("serviceWorker" in navigator && params.get("sw") !== "0") {
    navigator.serviceWorker.register("/sw.js").then(() => navigator.serviceWorker.ready).then(renderOffline).catch(() => {});
    navigator.serviceWorker.addEventListener?.("controllerchange", renderOffline);
  }
  addEventListener("online", renderOffline); addEventListener("offline", renderOffline);
  let installEvent = null;
  addEventListener("beforeinstallprompt", (e) => { e.preventDefault(); installEvent = e; $("install").hidden = false; });
  $("install").addEventListener("click", () => installEvent?.prompt());

  camera = makeCamera($("video"), onFrame, onCameraStats);
  state.camera = camera;
  pad = makePad($("pad"), (s) => onStrokes(s).catch((e) => status(`pad: ${e.message || e}`, "error")));
  for (const t of document.querySelectorAll(".tabs button")) t.addEventListener("click", () => showView(t.dataset.view));
  $("cam-toggle").addEventListener("click", toggleCamera);
  $("pad-clear").addEventListener("click", () => pad.clear());
  $("photo").addEventListener("change", (e) => e.target.files[0] && onPhoto(e.target.files[0]).catch((x) => status(`photo: ${x.message || x}`, "error")));
  $("bench").addEventListener("click", benchmark);
  $("share").addEventListener("click", share);
  $("download").addEventListener("click", () => downloadJson(`edge-${state.artifact.model}-${state.artifact.precision}-${state.backend}.json`,
    { ...shareBody(), summary: { ...state.bench, samples: undefined }, model: state.artifact.model, precision: state.artifact.precision }));
  $("artifact").addEventListener("change", (e) => loadArtifact(e.target.value, state.want || "wasm"));
  $("backends").addEventListener("click", (e) => {
    const b = e.target.closest("button");
    if (b && !b.disabled && state.ready) loadArtifact(state.artifact.id, b.dataset.ep);
  });

  try {
    state.catalogue = await (await fetch("/api/artifacts")).json();
  } catch (e) { return status(`no artifact list from edge serve (${e.message || e})`, "error"); }
  state.backends = await probeBackends();
  renderPickers();
  const saved = JSON.parse(localStorage.getItem("edge.choice") || "null") || {};
  const id = params.get("artifact") ?? saved.id ?? state.catalogue.default;
  let ep = params.get("backend") ?? saved.ep ?? "wasm";
  if (!state.backends[ep]?.available) ep = "wasm";
  showView(params.get("view") || "camera");
  await loadArtifact(id, ep);
}

main();
