// Drive the edge web app in headless Chromium as a phone (390x844, touch): the artifact picker, the drawing
// pad (stored finger strokes sent as touch events), the camera loop (Chromium's fake camera playing a
// .y4m of digits), the benchmark and its share/download; in a second browser with a WebGPU adapter
// (SwiftShader) where Chromium offers one, the webgpu backend; last, an offline reload (the driver prints
// STOP_SERVER and the test stops `edge serve`).
// usage: node tests/web/pwa.mjs URL WORKDIR APP_DIR STROKES.json VIDEO.y4m ITERS -> one JSON line on stdout
import { createRequire } from "node:module";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";

const [url, work, appDir, strokesFile, video, iters = "50"] = process.argv.slice(2);
const require = createRequire(path.join(path.resolve(appDir), "package.json"));
const { chromium } = require("playwright-core");
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const strokes = JSON.parse(readFileSync(strokesFile, "utf8"));
const BASE = ["--no-sandbox", "--disable-quic", "--no-first-run", "--disable-background-networking",
  "--disable-component-update", "--disable-sync"];
const PHONE = { viewport: { width: 390, height: 844 }, deviceScaleFactor: 3, isMobile: true, hasTouch: true,
  userAgent: "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Mobile Safari/537.36 edge-test",
  acceptDownloads: true };
const out = { ok: false, log: [], steps: {} };
const dirs = [], contexts = [];
const t0 = Date.now();
const step = (name) => { out.steps[name] = (Date.now() - t0) / 1000; console.error(`step ${name} ${out.steps[name]}s`); };

async function launch(extra) {
  const dir = mkdtempSync(path.join(tmpdir(), "edge-chromium-"));   // a fresh --user-data-dir each time
  dirs.push(dir);
  const context = await chromium.launchPersistentContext(dir, { executablePath, headless: true, args: [...BASE, ...extra], ...PHONE });
  contexts.push(context);
  const page = context.pages()[0] || await context.newPage();
  page.on("console", (m) => {
    if ((m.type() === "error" || m.type() === "warning") && !/^[\d-]+ [\d:.]+ \[[IV]:onnxruntime/.test(m.text())) out.log.push(`${m.type()}: ${m.text().slice(0, 300)}`);
  });
  page.on("pageerror", (e) => out.log.push(`pageerror: ${e.message}`));
  return { context, page };
}

const ready = (page, extra = "true") => page.waitForFunction(`window.edgeApp && edgeApp.ready && (${extra})`, null, { timeout: 60000 });
// A full-page screenshot at CSS pixels (390 wide: small PNGs for docs/), scrolled to the top.
const shot = async (page, name) => { await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: path.join(work, name), scale: "css", fullPage: true }); };
const snapshot = (page) => page.evaluate(() => ({ ...edgeApp.last, backend: edgeApp.backend, precision: edgeApp.artifact.precision,
  artifact: edgeApp.artifact.id }));

// Finger strokes as real touch events (CDP Input.dispatchTouchEvent), in the pad's page coordinates.
async function draw(page, cdp, digitStrokes) {
  await page.click("#pad-clear");
  const box = await page.locator("#pad").boundingBox();
  const at = ([x, y]) => ({ x: box.x + x * box.width, y: box.y + y * box.height, id: 1 });
  for (const s of digitStrokes) {
    await cdp.send("Input.dispatchTouchEvent", { type: "touchStart", touchPoints: [at(s[0])] });
    for (const p of s.slice(1)) await cdp.send("Input.dispatchTouchEvent", { type: "touchMove", touchPoints: [at(p)] });
    await cdp.send("Input.dispatchTouchEvent", { type: "touchEnd", touchPoints: [] });
  }
  await page.waitForTimeout(50);
  await page.waitForFunction(() => edgeApp.padIdle() && edgeApp.last?.source === "pad", null, { timeout: 30000 });
  return snapshot(page);
}

try {
  // ------------------------------------------------------------------ phone, no GPU, fake camera
  const { context, page } = await launch(["--disable-gpu", "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream", `--use-file-for-fake-video-capture=${video}`]);
  await context.grantPermissions(["camera"], { origin: new URL(url).origin });
  await page.goto(url + "?view=draw", { waitUntil: "load" });
  await ready(page);
  step("loaded");
  Object.assign(out, await page.evaluate(() => ({ catalogue: edgeApp.catalogue, backends: edgeApp.backends,
    cross_origin_isolated: self.crossOriginIsolated, first: { backend: edgeApp.backend, precision: edgeApp.artifact.precision },
    options: [...document.querySelectorAll("#artifact option")].map((o) => ({ value: o.value, text: o.textContent })),
    backend_buttons: [...document.querySelectorAll("#backends button")].map((b) => ({ ep: b.dataset.ep, disabled: b.disabled, title: b.title })),
    manifest_name: null })));
  out.manifest_name = (await page.evaluate(() => fetch("/manifest.webmanifest").then((r) => r.json()))).name;
  const byPrecision = Object.fromEntries(out.catalogue.artifacts.map((a) => [a.precision, a.id]));
  // the drawing pad on fp32
  if (out.first.precision !== "fp32") { await page.selectOption("#artifact", byPrecision.fp32); await ready(page, "edgeApp.artifact.precision === 'fp32'"); }
  const cdp = await context.newCDPSession(page);
  out.pad = {};
  for (const digit of ["1", "7"]) out.pad[digit] = await draw(page, cdp, strokes[digit]);
  await shot(page, "web-draw.png");
  step("pad");
  // the picker: int8 (the 7 on the pad is classified again by the new session)
  await page.selectOption("#artifact", byPrecision.int8);
  await ready(page, "edgeApp.artifact.precision === 'int8' && edgeApp.last && edgeApp.last.artifact === edgeApp.artifact.id");
  await page.waitForFunction(() => edgeApp.padIdle());
  out.pad_int8_7 = await snapshot(page);
  step("picker");
  // the camera loop
  await page.click("#tab-camera");
  await page.click("#cam-toggle");
  await page.waitForFunction(() => edgeApp.timing.camera.run.length >= 12, null, { timeout: 60000 });
  out.camera = [];
  for (let i = 0; i < 4; i++) { out.camera.push(await snapshot(page)); await page.waitForTimeout(350); }
  await page.waitForFunction(() => edgeApp.timing.camera.run.length >= 40, null, { timeout: 60000 });
  out.camera_timing = await page.evaluate(() => ({ ...edgeApp.timing.camera, frames: edgeApp.camera.state.frames,
    hud: [document.getElementById("cam-lat").textContent, document.getElementById("cam-fps").textContent] }));
  await shot(page, "web-camera.png");
  // hidden page: the loop stops; visible again: it resumes
  const hide = (hidden) => page.evaluate((h) => { Object.defineProperty(document, "hidden", { value: h, configurable: true });
    document.dispatchEvent(new Event("visibilitychange")); }, hidden);
  await hide(true);
  const f0 = await page.evaluate(() => edgeApp.camera.state.frames);
  await page.waitForTimeout(600);
  out.paused = await page.evaluate((f) => ({ running: edgeApp.camera.running, paused: edgeApp.camera.state.paused,
    frames_while_hidden: edgeApp.camera.state.frames - f }), f0);
  await hide(false);
  await page.waitForFunction((f) => edgeApp.camera.state.frames > f + 3, f0, { timeout: 30000 });
  out.resumed = true;
  step("camera");
  // the benchmark: cold/warm load, first inference, percentiles, histogram, the desktop cell, share, download
  await page.click("#tab-bench");
  await page.fill("#warmup", "5");
  await page.fill("#iters", iters);
  await page.click("#bench");
  await page.waitForFunction(() => /^(benchmark done|benchmark failed)/.test(document.getElementById("status").textContent), null, { timeout: 120000 });
  out.bench = await page.evaluate(() => ({ ...edgeApp.bench, status: document.getElementById("status").textContent,
    tiles: [...document.querySelectorAll("#bench-stats div")].map((d) => d.textContent), hist_bars: document.querySelectorAll("#hist rect").length,
    desktop_rows: [...document.querySelectorAll("#desktop tr")].map((r) => r.textContent) }));
  await page.click("#share");
  await page.waitForFunction(() => /^(posted|not posted)/.test(document.getElementById("status").textContent), null, { timeout: 30000 });
  out.share_status = await page.textContent("#status");
  const [download] = await Promise.all([page.waitForEvent("download"), page.click("#download")]);
  out.download = JSON.parse(readFileSync(await download.path(), "utf8"));
  out.download_name = download.suggestedFilename();
  await shot(page, "web-bench.png");
  step("bench");
  // ---------------------------------------------------- WebGPU (SwiftShader) where Chromium offers it
  const gpu = await launch(["--enable-unsafe-webgpu", "--use-webgpu-adapter=swiftshader"]);
  await gpu.page.goto(url + "?view=draw&sw=0&backend=webgpu&artifact=" + byPrecision.fp32, { waitUntil: "load" });
  await ready(gpu.page);
  out.webgpu = await gpu.page.evaluate(() => ({ backends: edgeApp.backends, backend: edgeApp.backend, fallback: edgeApp.fallback,
    placement: edgeApp.placement, notes: document.getElementById("backend-note").textContent }));
  if (out.webgpu.backend === "webgpu") {   // one inference (SwiftShader runs WebGPU on the CPU: seconds each)
    await gpu.page.evaluate((s) => edgeApp.drawStrokes(s), strokes["7"]);
    await gpu.page.waitForFunction(() => edgeApp.padIdle() && edgeApp.last?.source === "pad", null, { timeout: 120000 });
    out.webgpu.pad7 = await snapshot(gpu.page);
  }
  await shot(gpu.page, "web-backends.png");
  await gpu.context.close();
  contexts.splice(contexts.indexOf(gpu.context), 1);
  step("webgpu");
  // offline: once the service worker controls the page and has the artifact, a reload works offline
  await page.waitForFunction(() => navigator.serviceWorker.controller && edgeApp.cached.length > 0, null, { timeout: 30000 });
  // the laptop goes away: the test stops `edge serve` when asked, and the browser is offline too
  console.log("STOP_SERVER");
  for (let i = 0; i < 100; i++) { try { await fetch(url); await new Promise((r) => setTimeout(r, 200)); } catch (e) { break; } }
  await context.setOffline(true);
  await page.reload({ waitUntil: "load" });
  await ready(page);
  await page.click("#tab-draw");
  // (a cross-origin isolated page gets a new renderer on reload: a new CDP session)
  out.offline = { ...(await draw(page, await context.newCDPSession(page), strokes["1"])),
    online: await page.evaluate(() => navigator.onLine), footer: await page.textContent("#offline") };
  await shot(page, "web-offline.png");
  step("offline");

  out.ok = true;
} catch (e) {
  out.error = String((e && e.stack) || e);
  process.exitCode = 1;
} finally {
  console.log(JSON.stringify(out));
  const closing = Promise.all(contexts.map((c) => c.close().catch(() => {})));
  await Promise.race([closing, new Promise((r) => setTimeout(r, 15000))]);
  for (const d of dirs) try { rmSync(d, { recursive: true, force: true, maxRetries: 5 }); } catch (e) { /* best effort */ }
  process.exit(process.exitCode || 0);   // a browser that would not close goes with this process
}
