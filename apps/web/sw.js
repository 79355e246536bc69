// Service worker: the app and the runtime are cached when it installs, the artifacts the page loads are
// added by the page (app.js cacheForOffline). Network first, so a re-served artifact or a new app version
// is picked up at once; the cache answers when the network does not, so the installed app keeps working
// without the laptop once it has loaded a model.
const CACHE = "edge-web-v2";
const SHELL = ["/", "/index.html", "/app.js", "/infer.js", "/camera.js", "/pad.js", "/bench.js", "/style.css",
  "/manifest.webmanifest", "/icon.svg", "/icon-192.png", "/icon-512.png", "/api/artifacts",
  "/ort/ort.min.mjs", "/ort/ort-wasm-simd-threaded.jsep.mjs", "/ort/ort-wasm-simd-threaded.jsep.wasm"];

self.addEventListener("install", (e) => {
  e.waitUntil(caches.open(CACHE).then((c) => c.addAll(SHELL)).then(() => self.skipWaiting()));
});

self.addEventListener("activate", (e) => {
  e.waitUntil(caches.keys().then((keys) => Promise.all(keys.filter((k) => k !== CACHE).map((k) => caches.delete(k))))
    .then(() => self.clients.claim()));
});

self.addEventListener("fetch", (e) => {
  const url = new URL(e.request.url);
  if (e.request.method !== "GET" || url.origin !== location.origin) return;
  const key = url.pathname === "/index.html" ? "/" : url.pathname;   // the query (?artifact=..) is the page's business
  e.respondWith(fetch(e.request).then((resp) => {
    if (resp.ok && resp.type === "basic") {
      const copy = resp.clone();
      caches.open(CACHE).then((c) => c.put(key, copy));
    }
    return resp;
  }).catch(() => caches.match(key).then((r) => r || Response.error())));
});
