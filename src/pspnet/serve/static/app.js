// PSPNet web page: upload -> POST /v1/segment?format=json -> canvas overlay, legend, downloads. No build step.
"use strict";
const $ = (id) => document.getElementById(id);
const view = { base: null, labels: null, palette: [], names: [], stem: "image" };

function setStatus(text, state) { $("status").textContent = text; $("status").dataset.state = state; }
function showError(text) { $("error").textContent = text; $("error").hidden = !text; }

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the browser could not display the returned PNG"));
    img.src = src;
  });
}

async function loadModel() {
  try {
    const m = await (await fetch("/v1/model")).json();
    view.palette = m.palette; view.names = m.class_names;
    $("model").textContent = `model ${m.name} · ${m.num_classes} classes · ${m.device}` +
      (m.precision ? ` ${m.precision}` : "") + ` · ${m.input.mode} inference`;
    $("limits").textContent = `Any size up to ${(m.input.max_pixels / 1e6).toFixed(0)} megapixels and ` +
      `${(m.input.max_bytes / 2 ** 20).toFixed(0)} MiB; JPEG, PNG, BMP, TIFF, WebP, GIF.`;
  } catch (e) { $("model").textContent = "model info unavailable: " + e; }
}

// The server returns the image exactly as the model saw it (alpha=0 overlay: decoded, RGB), so the
// labels line up even for formats or EXIF orientations the browser would show differently.
async function segment(blob, name) {
  showError("");
  view.stem = (name || "image").replace(/\.[^.]*$/, "");
  setStatus(`Segmenting ${name || "image"} (${(blob.size / 1024).toFixed(0)} KiB)…`, "busy");
  const form = new FormData();
  form.append("image", blob, name || "image");
  const t0 = performance.now();
  let res;
  try {
    res = await fetch("/v1/segment?format=json&alpha=0", { method: "POST", body: form });
  } catch (e) { setStatus("", "error"); showError("Network error: " + e.message); return; }
  if (!res.ok) {
    let msg = `${res.status} ${res.statusText}`;
    try { const j = await res.json(); if (j.detail) msg += ": " + (typeof j.detail === "string" ? j.detail : JSON.stringify(j.detail)); } catch (_) { /* not JSON */ }
    if (res.headers.get("Retry-After")) msg += ` (retry in ${res.headers.get("Retry-After")} s)`;
    setStatus("", "error"); showError(msg); return;
  }
  const out = await res.json();
  try {
    [view.base, view.labels] = await Promise.all([
      loadImage("data:image/png;base64," + out.overlay_png_base64),
      loadImage("data:image/png;base64," + out.labels_png_base64)]);
  } catch (e) { setStatus("", "error"); showError(e.message); return; }
  $("download").href = "data:image/png;base64," + out.labels_png_base64;
  $("download").download = `${view.stem}_labels.png`;
  $("download-overlay").download = `${view.stem}_overlay.png`;
  $("result").hidden = false;
  draw();
  renderLegend(out.classes);
  setStatus(`${out.width}×${out.height} segmented in ${((performance.now() - t0) / 1000).toFixed(2)} s`, "done");
}

function draw() {
  if (!view.base) return;
  const canvas = $("overlay"), ctx = canvas.getContext("2d");
  const alpha = $("opacity").value / 100;
  canvas.width = view.base.naturalWidth; canvas.height = view.base.naturalHeight;
  ctx.imageSmoothingEnabled = false;
  ctx.globalAlpha = 1; ctx.drawImage(view.base, 0, 0);
  ctx.globalAlpha = alpha; ctx.drawImage(view.labels, 0, 0);
  ctx.globalAlpha = 1;
  $("opacity-value").textContent = `${Math.round(alpha * 100)}%`;
  $("download-overlay").href = canvas.toDataURL("image/png");
}

function renderLegend(classes) {
  const list = $("legend");
  list.replaceChildren();
  for (const c of classes.filter((c) => c.pixels > 0).sort((a, b) => b.fraction - a.fraction)) {
    const li = document.createElement("li");
    li.dataset.class = c.name;
    const color = `rgb(${c.color.join(",")})`;
    const sw = document.createElement("span"); sw.className = "swatch"; sw.style.background = color;
    const nm = document.createElement("span"); nm.className = "name"; nm.textContent = c.name;
    const sh = document.createElement("span"); sh.className = "share"; sh.textContent = c.fraction < 0.001 ? "<0.1%" : `${(100 * c.fraction).toFixed(1)}%`;
    const bar = document.createElement("span"); bar.className = "bar";
    const fill = document.createElement("span"); fill.style.width = `${100 * c.fraction}%`; fill.style.background = color;
    bar.append(fill); li.append(sw, nm, sh, bar); list.append(li);
  }
}

// Which class is under the pointer: read the label PNG's colour there and look it up in the palette.
const probe = document.createElement("canvas");
function classAt(x, y) {
  if (!view.labels) return null;
  if (probe.width !== view.labels.naturalWidth || probe.height !== view.labels.naturalHeight || probe.dataset.src !== view.labels.src) {
    probe.width = view.labels.naturalWidth; probe.height = view.labels.naturalHeight; probe.dataset.src = view.labels.src;
    probe.getContext("2d", { willReadFrequently: true }).drawImage(view.labels, 0, 0);
  }
  const [r, g, b] = probe.getContext("2d", { willReadFrequently: true }).getImageData(x, y, 1, 1).data;
  const i = view.palette.findIndex((p) => p[0] === r && p[1] === g && p[2] === b);
  return i >= 0 ? view.names[i] : null;
}

function pick(file) { if (file) segment(file, file.name); }

window.addEventListener("DOMContentLoaded", () => {
  loadModel();
  $("file").addEventListener("change", (e) => pick(e.target.files[0]));
  $("sample").addEventListener("click", async () => {
    const res = await fetch("/v1/sample");
    if (!res.ok) { showError("no sample image on this server"); return; }
    segment(await res.blob(), "camvid_0016E5_08059.jpg");
  });
  $("opacity").addEventListener("input", draw);
  const zone = $("dropzone");
  for (const ev of ["dragenter", "dragover"]) zone.addEventListener(ev, (e) => { e.preventDefault(); zone.classList.add("over"); });
  for (const ev of ["dragleave", "drop"]) zone.addEventListener(ev, (e) => { e.preventDefault(); zone.classList.remove("over"); });
  zone.addEventListener("drop", (e) => pick(e.dataTransfer.files[0]));
  document.addEventListener("paste", (e) => {
    const item = [...(e.clipboardData?.items || [])].find((it) => it.type.startsWith("image/"));
    if (item) pick(item.getAsFile());
  });
  $("overlay").addEventListener("mousemove", (e) => {
    const c = e.currentTarget, r = c.getBoundingClientRect();
    const x = Math.floor((e.clientX - r.left) * c.width / r.width), y = Math.floor((e.clientY - r.top) * c.height / r.height);
    const name = classAt(x, y);
    $("hover").textContent = name ? `${name} at (${x}, ${y})` : "\u00a0";
  });
});
