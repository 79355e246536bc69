// The live camera loop: rear camera, one inference per frame (never two in flight), paused while the
// page is hidden, with the frame latency p50 over the last WINDOW frames and the frame rate.
export const WINDOW = 30;

export function makeCamera(video, classify, onStats) {
  let stream = null, running = false, busy = false, handle = null;
  const times = [];   // completion times (ms) of the last frames: FPS
  const state = { frames: 0, paused: false, error: null };

  const schedule = () => {
    if (!running) return;
    handle = video.requestVideoFrameCallback ? { v: video.requestVideoFrameCallback(tick) } : { r: requestAnimationFrame(tick) };
  };
  async function tick() {
    if (!running || busy || video.readyState < 2) return schedule();
    busy = true;
    try {
      await classify(video, video.videoWidth, video.videoHeight);
      state.frames += 1;
      const now = performance.now();
      times.push(now);
      while (times.length > WINDOW) times.shift();
      const fps = times.length > 1 ? (1000 * (times.length - 1)) / (now - times[0]) : 0;
      onStats({ frames: state.frames, fps });
    } catch (e) {
      state.error = e.message || String(e);
      onStats({ error: state.error });
    } finally { busy = false; }
    schedule();
  }

  async function start() {
    if (running) return;
    if (!navigator.mediaDevices?.getUserMedia) throw new Error(isSecureContext ? "this browser has no camera API"
      : "the camera needs https or localhost");
    stream = stream || await navigator.mediaDevices.getUserMedia({ audio: false,
      video: { facingMode: { ideal: "environment" }, width: { ideal: 640 }, height: { ideal: 480 } } });
    video.srcObject = stream;
    await video.play();
    running = true; state.paused = false; times.length = 0;
    schedule();
  }
  function stop(release = true) {
    running = false;
    if (handle?.v !== undefined) video.cancelVideoFrameCallback?.(handle.v);
    if (handle?.r !== undefined) cancelAnimationFrame(handle.r);
    if (release && stream) { for (const t of stream.getTracks()) t.stop(); stream = null; video.srcObject = null; }
  }
  // a hidden page (another app, screen off) stops the loop and the camera; coming back resumes it
  let resume = false;
  document.addEventListener("visibilitychange", () => {
    if (document.hidden && running) { resume = true; state.paused = true; stop(true); onStats({ paused: true }); }
    else if (!document.hidden && resume) { resume = false; start().catch((e) => onStats({ error: e.message || String(e) })); }
  });
  return { start, stop, state, get running() { return running; } };
}
