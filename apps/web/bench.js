// The benchmark view: burn-in then a timed loop (as edge.profile does), a small histogram, the desktop
// run's cells of the same model from `edge serve`'s results.json beside ours, and sharing.
import { summarize } from "./infer.js";

export async function timeSession(session, feeds, { warmup, iters, onProgress }) {
  let t0 = performance.now();
  await session.run(feeds);
  const first = performance.now() - t0;
  for (let i = 1; i < warmup; i++) await session.run(feeds);
  const samples = [];
  for (let i = 0; i < iters; i++) {
    t0 = performance.now();
    await session.run(feeds);   // resolves when outputs are on the CPU (WebGPU included)
    samples.push(performance.now() - t0);
    if (i % 10 === 9) { onProgress?.(i + 1, iters); await new Promise((r) => setTimeout(r, 0)); }
  }
  return { first_inference_ms: first, samples, ...summarize(samples) };
}

export function histogramSvg(samples, bins = 18) {
  const lo = Math.min(...samples), hi = Math.max(...samples), w = (hi - lo) / bins || 1;
  const counts = new Array(bins).fill(0);
  for (const v of samples) counts[Math.min(bins - 1, Math.floor((v - lo) / w))] += 1;
  const top = Math.max(...counts), W = 300, H = 70, bw = W / bins;
  const bars = counts.map((c, i) => `<rect x="${(i * bw + 1).toFixed(1)}" y="${(H - 14 - (c / top) * (H - 18)).toFixed(1)}" ` +
    `width="${(bw - 2).toFixed(1)}" height="${((c / top) * (H - 18)).toFixed(1)}" rx="1.5"/>`).join("");
  return `<svg viewBox="0 0 ${W} ${H}" role="img" aria-label="latency histogram">${bars}` +
    `<text x="0" y="${H - 2}">${lo.toFixed(2)} ms</text><text x="${W}" y="${H - 2}" text-anchor="end">${hi.toFixed(2)} ms</text></svg>`;
}

// The cells of the same model (and input size) that are not this browser's: the desktop run's.
export function desktopCells(results, art, userAgent) {
  const res = art.input.shape[art.input.shape.length - 1];
  return (results.cells || []).filter((c) => c.model === art.model && (c.resolution == null || c.resolution === res)
    && c.user_agent !== userAgent && c.status === "ok" && typeof c.p50_ms === "number")
    .sort((a, b) => (b.precision === art.precision) - (a.precision === art.precision) || a.p50_ms - b.p50_ms);
}

export function downloadJson(name, data) {
  const url = URL.createObjectURL(new Blob([JSON.stringify(data, null, 2)], { type: "application/json" }));
  const a = Object.assign(document.createElement("a"), { href: url, download: name });
  document.body.append(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}
