// edge phone app: load the served ONNX artifact with onnxruntime-web (WebGPU where the browser has it,
// else WASM), classify a picked or camera image with the manifest's preprocessing, and measure latency
// the way edge.profile does (burn-in, then a timed loop) and post the samples back to `edge serve`.
import * as ort from "/ort/ort.min.mjs";

ort.env.wasm.wasmPaths = "/ort/";   // served from node_modules/onnxruntime-web/dist: no CDN
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const state = { manifest: null, session: null, backend: null, feeds: null, loadMs: null };
window.edgeApp = state;

function status(text) { $("status").textContent = text; }

function concreteShape(spec) { return spec.shape.map((d) => (typeof d === "string" ? 1 : d)); }

async function createSession(url) {
  // ?backend=wasm|webgpu forces one; otherwise WebGPU first when the browser offers an adapter.
  const want = params.get("backend");
  const order = [];
  if (want !== "wasm" && navigator.gpu) {
    try { if (await navigator.gpu.requestAdapter()) order.push("webgpu"); } catch (e) { /* no adapter */ }
  }
  if (want !== "webgpu") order.push("wasm");
  const errors = [];
  for (const ep of order) {
    try {
      const t0 = performance.now();
      const session = await ort.InferenceSession.create(url, { executionProviders: [ep], graphOptimizationLevel: "all" });
      return { session, backend: ep, loadMs: performance.now() - t0 };
    } catch (e) { errors.push(`${ep}: ${e.message || e}`); }
  }
  throw new Error(`no execution provider could load the model (${errors.join("; ") || "none available"})`);
}

// Image -> Float32Array [1, C, H, W]: stretch to the model's size (as edge's calibration intake does),
// grey = ITU-R 601 luma (PIL's "L"), then (value * scale - mean) / std per channel.
export function preprocess(source, pre, shape, canvas) {
  const [, C, H, W] = shape;
  canvas.width = W; canvas.height = H;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.imageSmoothingEnabled = true; ctx.imageSmoothingQuality = "high";
  ctx.drawImage(source, 0, 0, W, H);
  const px = ctx.getImageData(0, 0, W, H).data;
  const scale = pre.scale ?? 1 / 255;
  const mean = pre.mean ?? new Array(C).fill(0), std = pre.std ?? new Array(C).fill(1);
  const out = new Float32Array(C * H * W);
  for (let i = 0; i < H * W; i++) {
    const r = px[4 * i], g = px[4 * i + 1], b = px[4 * i + 2];
    if (C === 1) {
      const grey = Math.floor((r * 299 + g * 587 + b * 114) / 1000);
      out[i] = (grey * scale - mean[0]) / std[0];
    } else {
      out[i] = (r * scale - mean[0]) / std[0];
      out[H * W + i] = (g * scale - mean[1]) / std[1];
      out[2 * H * W + i] = (b * scale - mean[2]) / std[2];
    }
  }
  return out;
}

function softmax(logits) {
  const m = Math.max(...logits);
  const e = logits.map((v) => Math.exp(v - m));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / s);
}

async function classify(file) {
  const { manifest, session } = state;
  const spec = manifest.inputs[0];
  const shape = concreteShape(spec);
  const bitmap = await createImageBitmap(file);
  const data = preprocess(bitmap, manifest.model.preprocessing || {}, shape, $("preview"));
  state.feeds = { [session.inputNames[0]]: new ort.Tensor("float32", data, shape) };
  const t0 = performance.now();
  const results = await session.run(state.feeds);
  const ms = performance.now() - t0;
  const logits = Array.from(results[session.outputNames[0]].data);
  const probs = softmax(logits);
  const order = probs.map((p, i) => [p, i]).sort((a, b) => b[0] - a[0]).slice(0, 5);
  const labels = manifest.model.labels || [];
  const name = (i) => labels[i] ?? `class ${i}`;
  $("result").innerHTML = `<b>${name(order[0][1])}</b> ${(order[0][0] * 100).toFixed(1)}%<br><small>` +
    order.slice(1).map(([p, i]) => `${name(i)} ${(p * 100).toFixed(1)}%`).join(", ") + ` · ${ms.toFixed(1)} ms</small>`;
  $("out").textContent = JSON.stringify({ top: order[0][1], label: name(order[0][1]), logits, backend: state.backend, ms });
  $("bench").disabled = false;
  status(`classified with ${state.backend}`);
}

function summarize(samples) {
  const a = [...samples].sort((x, y) => x - y);
  const pct = (q) => { const k = (a.length - 1) * q, f = Math.floor(k), c = Math.min(f + 1, a.length - 1); return a[f] + (a[c] - a[f]) * (k - f); };
  const mean = a.reduce((s, v) => s + v, 0) / a.length;
  const std = Math.sqrt(a.reduce((s, v) => s + (v - mean) ** 2, 0) / a.length);
  return { mean_ms: mean, std_ms: std, min_ms: a[0], max_ms: a[a.length - 1], p50_ms: pct(0.5), p90_ms: pct(0.9), p95_ms: pct(0.95), p99_ms: pct(0.99) };
}

async function benchmark() {
  const { session } = state;
  const warmup = Math.max(0, parseInt($("warmup").value, 10) || 0);
  const iters = Math.max(1, parseInt($("iters").value, 10) || 1);
  $("bench").disabled = true;
  if (!state.feeds) {   // no image yet: a fixed random input of the right shape
    const shape = concreteShape(state.manifest.inputs[0]);
    const n = shape.reduce((a, b) => a * b, 1);
    const d = new Float32Array(n); for (let i = 0; i < n; i++) d[i] = Math.sin(i * 12.9898) * 0.5;
    state.feeds = { [session.inputNames[0]]: new ort.Tensor("float32", d, shape) };
  }
  status(`warming up (${warmup})...`);
  let t0 = performance.now();
  await session.run(state.feeds);
  const first = performance.now() - t0;
  for (let i = 1; i < warmup; i++) await session.run(state.feeds);
  const samples = [];
  for (let i = 0; i < iters; i++) {
    t0 = performance.now();
    await session.run(state.feeds);   // resolves when outputs are on the CPU (WebGPU included)
    samples.push(performance.now() - t0);
    if (i % 10 === 0) { status(`timing ${i}/${iters}...`); await new Promise((r) => setTimeout(r, 0)); }
  }
  const s = summarize(samples);
  $("stats").innerHTML = `<table>${Object.entries({ backend: state.backend, ...s, first_inference_ms: first, load_ms: state.loadMs })
    .map(([k, v]) => `<tr><td>${k}</td><td>${typeof v === "number" ? v.toFixed(3) : v}</td></tr>`).join("")}</table>`;
  status("posting results...");
  const body = {
    backend: state.backend, warmup, iters, samples_ms: samples, first_inference_ms: first, load_ms: state.loadMs,
    user_agent: navigator.userAgent, hardware_concurrency: navigator.hardwareConcurrency || null,
    device_memory_gb: navigator.deviceMemory || null, screen: `${screen.width}x${screen.height}@${devicePixelRatio}`,
    threads: ort.env.wasm.numThreads || null, cross_origin_isolated: self.crossOriginIsolated === true,
  };
  try {
    const resp = await fetch("/api/results", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    const reply = await resp.json();
    if (!resp.ok) throw new Error(reply.error || resp.statusText);
    status(`posted: p50 ${reply.cell.p50_ms.toFixed(3)} ms joins ${reply.results}`);
  } catch (e) {
    status(`results not posted: ${e.message || e}`);
  }
  $("bench").disabled = false;
}

async function main() {
  if ("serviceWorker" in navigator && params.get("sw") !== "0") {
    navigator.serviceWorker.register("/sw.js").catch(() => { /* needs a secure context: fine without */ });
  }
  try {
    const manifest = await (await fetch("/artifact/manifest.json")).json();
    state.manifest = manifest;
    const main = Object.keys(manifest.files)[0];
    const { session, backend, loadMs } = await createSession(`/artifact/${main}`);
    Object.assign(state, { session, backend, loadMs });
    const info = manifest.model || {};
    $("model").textContent = `${info.name || manifest.source?.name || "model"} · ${manifest.precision} · ${backend}`;
    $("bench").disabled = false;
    status(`ready (${backend}, loaded in ${loadMs.toFixed(0)} ms)`);
  } catch (e) {
    status(`could not load the model: ${e.message || e}`);
    return;
  }
  $("image").addEventListener("change", (ev) => {
    const f = ev.target.files[0];
    if (f) classify(f).catch((e) => status(`classification failed: ${e.message || e}`));
  });
  $("bench").addEventListener("click", () => benchmark().catch((e) => { status(`benchmark failed: ${e.message || e}`); $("bench").disabled = false; }));
}

main();
