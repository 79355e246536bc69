// Inference helpers shared by the camera, the drawing pad and the benchmark: backends, sessions,
// preprocessing (the manifest's), top-k and the statistics edge.profile computes.
import * as ort from "/ort/ort.min.mjs";

export { ort };
ort.env.wasm.wasmPaths = "/ort/";   // served by `edge serve` from node_modules/onnxruntime-web/dist: no CDN

// A minimal module using a v128 instruction: WebAssembly.validate tells whether the engine has SIMD.
const SIMD_PROBE = new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 10, 1, 8, 0,
  65, 0, 253, 15, 253, 98, 11]);

// What this browser offers: {wasm, webgpu, webnn} -> {available, reason, detail}. Nothing is greyed
// without a reason a user can act on.
export async function probeBackends() {
  const simd = typeof WebAssembly === "object" && WebAssembly.validate(SIMD_PROBE);
  const isolated = self.crossOriginIsolated === true && typeof SharedArrayBuffer === "function";
  const threads = isolated ? Math.max(1, Math.min(4, navigator.hardwareConcurrency || 1)) : 1;
  ort.env.wasm.numThreads = threads;
  ort.env.wasm.simd = simd;
  const out = {
    wasm: { available: typeof WebAssembly === "object", detail: `${simd ? "SIMD" : "no SIMD"}, ${threads} thread${threads > 1 ? "s" : ""}` +
      (isolated ? "" : " (not cross-origin isolated: no threads)"), reason: typeof WebAssembly === "object" ? "" : "no WebAssembly" },
    webgpu: { available: false, detail: "", reason: "" },
    webnn: { available: false, detail: "", reason: "" },
  };
  if (!navigator.gpu) {
    out.webgpu.reason = isSecureContext ? "this browser has no WebGPU (navigator.gpu is missing)"
      : "WebGPU needs https or localhost (this page is not a secure context)";
  } else {
    try {
      const adapter = await navigator.gpu.requestAdapter();
      if (adapter) {
        const info = adapter.info || {};
        Object.assign(out.webgpu, { available: true, detail: [info.vendor, info.architecture].filter(Boolean).join(" ") || "adapter found" });
      } else out.webgpu.reason = "no WebGPU adapter: the GPU is disabled, blocklisted or missing";
    } catch (e) { out.webgpu.reason = `requestAdapter failed: ${e.message || e}`; }
  }
  if (!navigator.ml) {
    out.webnn.reason = "this browser has no WebNN (navigator.ml is missing; Chrome has it behind a flag)";
  } else {
    try { await navigator.ml.createContext(); Object.assign(out.webnn, { available: true, detail: "navigator.ml context" }); }
    catch (e) { out.webnn.reason = `navigator.ml.createContext failed: ${e.message || e}`; }
  }
  return out;
}

// onnxruntime logs where nodes went when verbose ("Node(s) placed on [CPUExecutionProvider]. Number of
// nodes: 3", then one "  Shape (node_name)" line per node); the op types that did not land on the backend.
function placementFrom(lines) {
  const off = {}; let onCpu = false, seen = false;
  for (const line of lines) {
    const head = /placed on \[(\w+)\]/.exec(line);
    if (head) { seen = true; onCpu = head[1] === "CPUExecutionProvider"; continue; }
    const node = /\]?\s+(\w+) \(([^()]*)\)\s*$/.exec(line);
    if (onCpu && node) off[node[1]] = (off[node[1]] || 0) + 1;
  }
  return seen ? Object.entries(off).map(([op, count]) => ({ op, count })) : null;
}

const OPTIONS = { graphOptimizationLevel: "all" };

async function createOn(ep, bytes, externalData) {
  const opts = { ...OPTIONS, executionProviders: [ep], ...(externalData.length ? { externalData } : {}) };
  if (ep === "wasm") return { session: await ort.InferenceSession.create(bytes, opts), placement: null };
  // other backends: a first session built with verbose logs says where each node went (captured from the
  // console), then the session used is built without them (verbose logs would slow every run)
  const lines = [], keep = { log: console.log, info: console.info, warn: console.warn, error: console.error };
  for (const k of Object.keys(keep)) console[k] = (...a) => { if (lines.length < 20000) lines.push(a.join(" ")); };
  const level = ort.env.logLevel;
  ort.env.logLevel = "verbose";
  let probe;
  try { probe = await ort.InferenceSession.create(bytes, { ...opts, logSeverityLevel: 0, logVerbosityLevel: 0 }); }
  finally { ort.env.logLevel = level; Object.assign(console, keep); }
  await probe.release();
  const placement = placementFrom(lines.flatMap((l) => l.split("\n")));
  return { session: await ort.InferenceSession.create(bytes, opts), placement };
}

// Load an artifact's model on `ep`; when that backend fails, fall back to wasm and say so.
// Returns {session, backend, fallback, placement, coldMs, warmMs}: cold = fetch + build, warm = build again
// from the bytes already in memory (what a second visit costs once the service worker has the file).
export async function loadModel(base, manifest, ep) {
  const t0 = performance.now();
  const main = Object.keys(manifest.files)[0];
  const resp = await fetch(base + main);
  if (!resp.ok) throw new Error(`GET ${base + main}: ${resp.status}`);
  const bytes = new Uint8Array(await resp.arrayBuffer());
  const externalData = [];
  for (const name of Object.keys(manifest.files).slice(1)) externalData.push({ path: name, data: base + name });
  let made, backend = ep, fallback = null;
  try { made = await createOn(ep, bytes, externalData); }
  catch (e) {
    if (ep === "wasm") throw e;
    fallback = `${ep} could not load this model (${(e.message || String(e)).split("\n")[0].slice(0, 200)}); running on wasm`;
    made = await createOn("wasm", bytes, externalData); backend = "wasm";
  }
  const coldMs = performance.now() - t0;
  return { ...made, backend, fallback, coldMs, bytes, externalData };
}

export async function warmLoadMs(bytes, backend, externalData) {
  const t0 = performance.now();
  const opts = { ...OPTIONS, executionProviders: [backend], ...(externalData.length ? { externalData } : {}) };
  const s = await ort.InferenceSession.create(bytes, opts);
  const ms = performance.now() - t0;
  await s.release();
  return ms;
}

export function concreteShape(spec) { return spec.shape.map((d) => (typeof d === "string" ? 1 : d)); }

// Pixels [H*W*4 RGBA] -> Float32Array [C*H*W]: grey = ITU-R 601 luma (PIL's "L") for one channel,
// then (value * scale - mean) / std per channel, as the manifest's preprocessing says.
export function normalize(px, pre, C, H, W) {
  const scale = pre.scale ?? 1 / 255;
  const mean = pre.mean ?? new Array(C).fill(0), std = pre.std ?? new Array(C).fill(1);
  const out = new Float32Array(C * H * W);
  for (let i = 0; i < H * W; i++) {
    const r = px[4 * i], g = px[4 * i + 1], b = px[4 * i + 2];
    if (C === 1) {
      out[i] = (Math.floor((r * 299 + g * 587 + b * 114) / 1000) * scale - mean[0]) / std[0];
    } else {
      out[i] = (r * scale - mean[0]) / std[0];
      out[H * W + i] = (g * scale - mean[1]) / std[1];
      out[2 * H * W + i] = (b * scale - mean[2]) / std[2];
    }
  }
  return out;
}

// A video frame or image: the centred square (a phone camera is not square), scaled to the model's size.
export function preprocessFrame(source, sw, sh, pre, shape, canvas) {
  const [, C, H, W] = shape;
  canvas.width = W; canvas.height = H;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.imageSmoothingEnabled = true; ctx.imageSmoothingQuality = "high";
  const side = Math.min(sw, sh);
  ctx.drawImage(source, (sw - side) / 2, (sh - side) / 2, side, side, 0, 0, W, H);
  return normalize(ctx.getImageData(0, 0, W, H).data, pre, C, H, W);
}

// Bilinear resize of a [h, w] grid to [H, W] with half-pixel centres (torch's align_corners=False).
export function resizeBilinear(grid, h, w, H, W) {
  const out = new Float32Array(H * W);
  const src = (d, n, N) => Math.max((d + 0.5) * (n / N) - 0.5, 0);
  for (let y = 0; y < H; y++) {
    const sy = src(y, h, H), y0 = Math.floor(sy), y1 = Math.min(y0 + 1, h - 1), ly = sy - y0;
    for (let x = 0; x < W; x++) {
      const sx = src(x, w, W), x0 = Math.floor(sx), x1 = Math.min(x0 + 1, w - 1), lx = sx - x0;
      out[y * W + x] = (1 - ly) * ((1 - lx) * grid[y0 * w + x0] + lx * grid[y0 * w + x1])
        + ly * ((1 - lx) * grid[y1 * w + x0] + lx * grid[y1 * w + x1]);
    }
  }
  return out;
}

export function softmax(logits) {
  let m = -Infinity;
  for (const v of logits) m = Math.max(m, v);
  const e = logits.map((v) => Math.exp(v - m));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / s);
}

export function topK(logits, labels, k = 5) {
  const p = softmax(Array.from(logits));
  return p.map((prob, index) => ({ index, prob, label: labels?.[index] ?? `class ${index}` }))
    .sort((a, b) => b.prob - a.prob).slice(0, k);
}

// The statistics edge.profile.summarize computes (linear-interpolated percentiles).
export function summarize(samples) {
  const a = [...samples].sort((x, y) => x - y);
  const pct = (q) => { const k = (a.length - 1) * q, f = Math.floor(k), c = Math.min(f + 1, a.length - 1); return a[f] + (a[c] - a[f]) * (k - f); };
  const mean = a.reduce((s, v) => s + v, 0) / a.length;
  const std = Math.sqrt(a.reduce((s, v) => s + (v - mean) ** 2, 0) / a.length);
  return { mean_ms: mean, std_ms: std, min_ms: a[0], max_ms: a[a.length - 1], p50_ms: pct(0.5), p90_ms: pct(0.9),
    p95_ms: pct(0.95), p99_ms: pct(0.99) };
}

export function median(values) { return values.length ? summarize(values).p50_ms : NaN; }
