// The drawing pad for the digits models: draw with a finger, classified as you draw.
//
// The digits models were trained on scikit-learn's 8x8 scans upsampled to 32x32, digits filling the
// height. The pad does the same to what is drawn: the strokes' box scaled to fill a square, strokes
// rendered as thick as a scan's (GRID cells), averaged down to GRID x GRID, brightest cell = 1, upsampled
// bilinearly to the model's size, then the manifest's mean/std.
import { resizeBilinear } from "./infer.js";

const GRID = 8, CELL = 8, STROKE = 0.18;   // STROKE: line width as a fraction of the rendered square

export function isDigitsModel(manifest) {
  const m = manifest.model || {}, shape = manifest.inputs[0].shape;
  const labels = m.labels || [];
  return shape[1] === 1 && labels.length === 10 && labels.every((l, i) => String(l) === String(i));
}

// strokes: [[[x, y], ...], ...] in pad units (0..1) -> Float32Array [H*W] for a [1, 1, H, W] model, or null.
export function strokesToInput(strokes, pre, H, W, canvas) {
  const pts = strokes.flat();
  if (pts.length === 0) return null;
  let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
  for (const [x, y] of pts) { x0 = Math.min(x0, x); y0 = Math.min(y0, y); x1 = Math.max(x1, x); y1 = Math.max(y1, y); }
  const R = GRID * CELL, lw = STROKE * R, side = Math.max(x1 - x0, y1 - y0, 1e-3), k = (R - lw) / side;
  const cx = (x0 + x1) / 2, cy = (y0 + y1) / 2;
  canvas.width = R; canvas.height = R;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.fillStyle = "#000"; ctx.fillRect(0, 0, R, R);
  ctx.strokeStyle = "#fff"; ctx.fillStyle = "#fff"; ctx.lineWidth = lw; ctx.lineCap = "round"; ctx.lineJoin = "round";
  for (const s of strokes) {
    const p = s.map(([x, y]) => [(x - cx) * k + R / 2, (y - cy) * k + R / 2]);
    ctx.beginPath();
    if (p.length === 1) { ctx.arc(p[0][0], p[0][1], lw / 2, 0, 2 * Math.PI); ctx.fill(); continue; }
    ctx.moveTo(...p[0]);
    for (const q of p.slice(1)) ctx.lineTo(...q);
    ctx.stroke();
  }
  const px = ctx.getImageData(0, 0, R, R).data;
  const grid = new Float32Array(GRID * GRID);
  for (let y = 0; y < R; y++) for (let x = 0; x < R; x++) grid[Math.floor(y / CELL) * GRID + Math.floor(x / CELL)] += px[4 * (y * R + x)] / 255;
  let max = 0;
  for (let i = 0; i < grid.length; i++) { grid[i] /= CELL * CELL; max = Math.max(max, grid[i]); }
  const up = resizeBilinear(grid.map((v) => v / (max || 1)), GRID, GRID, H, W);
  const mean = pre.mean?.[0] ?? 0, std = pre.std?.[0] ?? 1;
  return up.map((v) => (v - mean) / std);   // the grid is already in [0, 1]: the scale step is done
}

// A pad on `canvas`: calls onChange(strokes) while drawing (at most one call per animation frame).
export function makePad(canvas, onChange) {
  const strokes = [];
  let drawing = false, pending = false;
  const ctx = canvas.getContext("2d");
  const resize = () => {
    const r = canvas.getBoundingClientRect(), dpr = devicePixelRatio || 1;
    canvas.width = Math.round(r.width * dpr); canvas.height = Math.round(r.height * dpr);
    redraw();
  };
  const redraw = () => {
    ctx.fillStyle = "#0b0f14"; ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.strokeStyle = "#fff"; ctx.lineCap = "round"; ctx.lineJoin = "round"; ctx.lineWidth = canvas.width * 0.06;
    for (const s of strokes) {
      ctx.beginPath();
      s.forEach(([x, y], i) => (i ? ctx.lineTo(x * canvas.width, y * canvas.height) : ctx.moveTo(x * canvas.width, y * canvas.height)));
      if (s.length === 1) ctx.lineTo(s[0][0] * canvas.width + 0.1, s[0][1] * canvas.height);
      ctx.stroke();
    }
  };
  const at = (e) => { const r = canvas.getBoundingClientRect(); return [(e.clientX - r.left) / r.width, (e.clientY - r.top) / r.height]; };
  const changed = () => {
    redraw();
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => { pending = false; onChange(strokes); });
  };
  canvas.addEventListener("pointerdown", (e) => { drawing = true; canvas.setPointerCapture?.(e.pointerId); strokes.push([at(e)]); changed(); e.preventDefault(); });
  canvas.addEventListener("pointermove", (e) => { if (drawing) { strokes[strokes.length - 1].push(at(e)); changed(); e.preventDefault(); } });
  for (const ev of ["pointerup", "pointercancel"]) canvas.addEventListener(ev, () => { if (drawing) { drawing = false; changed(); } });
  new ResizeObserver(resize).observe(canvas);
  const set = (list) => { strokes.length = 0; strokes.push(...list.map((st) => st.map(([x, y]) => [x, y]))); redraw(); };
  return { strokes, set, clear() { strokes.length = 0; redraw(); onChange(strokes); }, redraw, idle: () => !drawing && !pending };
}
