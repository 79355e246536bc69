// Drive the edge web app in headless Chromium as a phone (390x844 at DPR 3): pick an image, read the
// page's classification, run its benchmark and wait until the results are posted back.
// usage: node tests/web/pwa.mjs URL IMAGE.png APP_DIR [ITERS]   -> one JSON line on stdout
import { createRequire } from "node:module";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";

const [url, image, appDir, iters = "20"] = process.argv.slice(2);
const require = createRequire(path.join(path.resolve(appDir), "package.json"));
const { chromium } = require("playwright-core");
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const userDataDir = mkdtempSync(path.join(tmpdir(), "edge-chromium-"));
const args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
  "--disable-sync", "--no-first-run"];   // the fresh --user-data-dir is launchPersistentContext's first argument
const ua = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Mobile Safari/537.36 edge-test";

const log = [];
let context;
try {
  context = await chromium.launchPersistentContext(userDataDir, { executablePath, headless: true, args,
    viewport: { width: 390, height: 844 }, deviceScaleFactor: 3, isMobile: true, hasTouch: true, userAgent: ua });
  const page = await context.newPage();
  page.on("console", (m) => log.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => log.push(`pageerror: ${e.message}`));
  await page.goto(url, { waitUntil: "load" });
  await page.waitForFunction(() => /^ready/.test(document.getElementById("status").textContent)
    || /could not/.test(document.getElementById("status").textContent), null, { timeout: 60000 });
  const ready = await page.textContent("#status");
  if (!ready.startsWith("ready")) throw new Error(`page did not load the model: ${ready}`);
  await page.setInputFiles("#image", image);
  await page.waitForFunction(() => document.getElementById("out").textContent.length > 0, null, { timeout: 60000 });
  const output = JSON.parse(await page.textContent("#out"));
  await page.fill("#warmup", "3");
  await page.fill("#iters", String(iters));
  await page.click("#bench");
  await page.waitForFunction(() => /^(posted|results not posted|benchmark failed)/.test(
    document.getElementById("status").textContent), null, { timeout: 120000 });
  const status = await page.textContent("#status");
  const manifest = await page.evaluate(() => fetch("/manifest.webmanifest").then((r) => r.json()));
  const isolated = await page.evaluate(() => self.crossOriginIsolated);
  await page.screenshot({ path: path.join(path.dirname(image), "pwa.png") });
  console.log(JSON.stringify({ ok: true, output, status, ready, user_agent: ua, manifest_name: manifest.name,
    cross_origin_isolated: isolated, log }));
} catch (e) {
  console.log(JSON.stringify({ ok: false, error: String(e && e.stack || e), log }));
  process.exitCode = 1;
} finally {
  if (context) await context.close();
  rmSync(userDataDir, { recursive: true, force: true });
}
