// The draw-a-digit page: capture strokes, send the canvas as a PNG, show what the server says.
// No preprocessing happens here on purpose: the server runs the same code as `mnist-cnn predict`.
"use strict";

const DEBOUNCE_MS = 150;  // live prediction while drawing, without a request per pointer move
const SIZES = { single: [280, 280], multi: [800, 400] };  // canvas pixels; CSS scales it to the screen

const $ = (id) => document.getElementById(id);
const pad = $("pad");
const ctx = pad.getContext("2d");
const boxes = $("boxes");  // an overlay: where the digits of a number were read
const result = $("result");

let strokes = [];       // [{width, points: [[x, y], ...]}]; Undo pops one and redraws the rest
let current = null;     // the stroke being drawn
let timer = null;       // debounce timer of the next live prediction
let seq = 0;            // id of the newest request; answers to older ones are dropped
let busy = false;       // a request is in flight (one at a time, so a slow server is not flooded)
let dirty = false;      // the drawing changed while that request was in flight
let shown = null;       // {blob, name} of the image whose answer is on screen: what a correction sends
let collecting = false; // the server keeps corrections (serve --collect)
const TOKEN = new URLSearchParams(location.search).get("token");  // a collecting server off loopback needs it

// ------------------------------------------------------------------ drawing

function multiMode() { return $("multi").checked; }

function drawStroke(s) {
  ctx.lineWidth = s.width;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  ctx.strokeStyle = ctx.fillStyle = "#111";
  const p = s.points;
  if (p.length === 1) {  // a tap is a dot
    ctx.beginPath();
    ctx.arc(p[0][0], p[0][1], s.width / 2, 0, 2 * Math.PI);
    ctx.fill();
    return;
  }
  ctx.beginPath();
  ctx.moveTo(p[0][0], p[0][1]);
  for (let i = 1; i < p.length; i++) ctx.lineTo(p[i][0], p[i][1]);
  ctx.stroke();
}

function redraw() {
  // The background stays transparent: the ink lives in the alpha channel, which the
  // server's preprocessing reads directly (the white you see is the page behind the canvas).
  ctx.clearRect(0, 0, pad.width, pad.height);
  strokes.forEach(drawStroke);
}

function toCanvas(ev) {
  const r = pad.getBoundingClientRect();
  return [(ev.clientX - r.left) * pad.width / r.width, (ev.clientY - r.top) * pad.height / r.height];
}

pad.addEventListener("pointerdown", (ev) => {
  if (ev.button !== 0 || current) return;  // one stroke at a time: a second finger is ignored
  ev.preventDefault();
  pad.setPointerCapture(ev.pointerId);
  // A number's pad is wider and its digits smaller: half the brush keeps strokes as thick, for their size, as MNIST's.
  const brush = Number($("brush").value) * pad.height / (multiMode() ? 560 : 280);
  current = { id: ev.pointerId, width: brush, points: [toCanvas(ev)] };
  strokes.push(current);
  drawStroke(current);
  $("upload-box").hidden = true;
  changed();
});

pad.addEventListener("pointermove", (ev) => {
  if (!current || ev.pointerId !== current.id) return;
  const events = ev.getCoalescedEvents ? ev.getCoalescedEvents() : [ev];
  for (const e of (events.length ? events : [ev])) {
    const [x, y] = toCanvas(e);
    const last = current.points[current.points.length - 1];
    current.points.push([x, y]);
    ctx.lineWidth = current.width;
    ctx.lineCap = "round";
    ctx.strokeStyle = "#111";
    ctx.beginPath();
    ctx.moveTo(last[0], last[1]);
    ctx.lineTo(x, y);
    ctx.stroke();
  }
  changed();
});

function endStroke(ev) {
  if (!current || ev.pointerId !== current.id) return;
  current = null;
  changed(0);
}
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);

function undo() {
  strokes.pop();
  redraw();
  changed(0);
}

function clear() {
  strokes = [];
  redraw();
  changed(0);
}

$("undo").addEventListener("click", undo);
$("clear").addEventListener("click", clear);

document.addEventListener("keydown", (ev) => {
  if (ev.target instanceof HTMLInputElement && ev.target.type !== "checkbox") return;
  if ((ev.ctrlKey || ev.metaKey) && ev.key.toLowerCase() === "z") { ev.preventDefault(); undo(); }
  else if (ev.key === "Escape") clear();
});

$("multi").addEventListener("change", () => {
  const [w, h] = SIZES[multiMode() ? "multi" : "single"];
  pad.width = boxes.width = w;
  pad.height = boxes.height = h;
  pad.classList.toggle("wide", multiMode());
  strokes = [];
  redraw();
  changed(0);
});

// --------------------------------------------------------------- predicting

function changed(delay = DEBOUNCE_MS) {
  result.dataset.pending = "true";
  // While the pen keeps moving, keep the scheduled prediction instead of pushing it back, so the
  // answer updates every DEBOUNCE_MS during a long stroke; a finished stroke (delay 0) goes at once.
  if (delay > 0 && timer) return;
  clearTimeout(timer);
  timer = setTimeout(() => { timer = null; predictDrawing(); }, delay);
}

function predictDrawing() {
  if (!strokes.length) { seq++; busy = false; showIdle(); explainPanel.clear(); return; }
  if (busy) { dirty = true; return; }  // send the newest drawing once this answer is back
  busy = true;
  pad.toBlob((blob) => send(blob, "drawing.png"), "image/png");
}

async function send(blob, name) {
  const id = ++seq;
  busy = true;
  result.dataset.pending = "true";
  const form = new FormData();
  form.append("file", blob, name);
  try {
    const res = await fetch("/api/predict" + (multiMode() ? "?multi=true" : ""), { method: "POST", body: form });
    const body = await res.json().catch(() => ({ detail: `HTTP ${res.status}` }));
    if (id !== seq) return;
    if (!res.ok) throw new Error(typeof body.detail === "string" ? body.detail : `HTTP ${res.status}`);
    if (body.text !== undefined) { showNumber(body, name === "drawing.png"); explainPanel.clear(); }
    else { showDigit(body, { blob, name }); explainPanel.update(blob, name); }
  } catch (err) {
    if (id === seq) showError(err.message);
  } finally {
    if (id === seq) {
      busy = false;
      if (dirty) { dirty = false; predictDrawing(); }
      else if (!timer) result.dataset.pending = "false";
    }
  }
}

$("upload").addEventListener("change", () => {
  const file = $("upload").files[0];
  if (!file) return;
  clearTimeout(timer);
  timer = null;
  dirty = false;
  strokes = [];
  redraw();
  $("upload-thumb").src = URL.createObjectURL(file);
  $("upload-name").textContent = `Uploaded: ${file.name}`;
  $("upload-box").hidden = false;
  result.dataset.pending = "true";  // from now: shrinking comes before sending
  shrink(file).then(({ blob, note }) => {
    if (note) $("upload-name").textContent = `Uploaded: ${file.name} (${note})`;
    send(blob, file.name);
  });
  $("upload").value = "";  // choosing the same file again still fires "change"
});

// A phone photo has 12-48 megapixels; the server reads digits at about 1000 px a side. Shrinking
// it here makes the upload small and keeps it under the server's pixel limit. What the browser
// cannot decode (HEIC outside Safari) goes as it is: the server reads it.
const UPLOAD_SIDE = 2048;

async function shrink(file) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
  } catch {
    return { blob: file, note: "" };
  }
  const { width, height } = bitmap;
  const scale = UPLOAD_SIDE / Math.max(width, height);
  if (scale >= 1) { bitmap.close(); return { blob: file, note: "" }; }
  const canvas = document.createElement("canvas");
  canvas.width = Math.round(width * scale);
  canvas.height = Math.round(height * scale);
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingQuality = "high";
  ctx.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  bitmap.close();
  const blob = await new Promise((done) => canvas.toBlob(done, "image/jpeg", 0.92));
  return { blob: blob || file, note: blob ? `sent at ${canvas.width}x${canvas.height} of ${width}x${height}` : "" };
}

// ------------------------------------------------------------------ showing

const pct = (p) => `${(100 * p).toFixed(1)}%`;

function setState(state, digit, status) {
  if (state !== "ok" && state !== "unsure") showCorrection(null);  // nothing to correct on screen
  result.dataset.state = state;
  $("digit").textContent = digit;
  $("status").textContent = status;
}

function showIdle() {
  setState("idle", "–", "Draw a digit, or upload a photo of one.");
  showPreview(null);
  $("bars").replaceChildren();
  $("digits-box").hidden = true;
  drawBoxes(null);
  result.dataset.pending = "false";
}

function showError(message) {
  setState("error", "!", `Could not read that: ${message}`);
}

function showPreview(dataUrl) {
  $("preview-box").hidden = !dataUrl;
  if (dataUrl) $("preview").src = dataUrl;
}

function showDigit(p, image) {
  $("digits-box").hidden = true;
  drawBoxes(null);
  showPreview(p.processed_png);
  if (p.status === "empty") {
    setState("empty", "–", "No ink found: draw a digit.");
    $("bars").replaceChildren();
    return;
  }
  // An unsure answer has no digit; its best guess is still the first of topk.
  const [best, next] = p.topk;
  const guess = best.digit;
  setState(p.status, String(guess), p.status === "unsure"
    ? `Not sure: maybe ${guess} (${pct(best.probability)})` + (next ? `, or ${next.digit} (${pct(next.probability)}).` : ".")
    : `It is a ${guess} (${pct(best.probability)} sure).`);
  drawBars(p.probabilities, guess);
  showCorrection(image);
}

// ------------------------------------------------------------- correcting

// "Wrong? It was a [0-9]": the image on screen and its true label go to the samples store.
function showCorrection(image) {
  const changedImage = !shown || !image || shown.blob !== image.blob;
  shown = image;
  $("correct-box").hidden = !(collecting && image);
  if (changedImage) {
    $("correct-status").textContent = "";
    $("correct-status").classList.remove("bad");
    document.querySelectorAll(".digit-buttons button").forEach((b) => b.setAttribute("aria-pressed", "false"));
  }
}

async function saveSample(label, button) {
  if (!shown) return;
  const image = shown;
  const status = $("correct-status");
  status.classList.remove("bad");
  status.textContent = `Saving it as a ${label}…`;
  const form = new FormData();
  form.append("file", image.blob, image.name);
  form.append("label", label);
  try {
    const headers = TOKEN ? { "X-Collect-Token": TOKEN } : {};
    const res = await fetch("/api/samples", { method: "POST", body: form, headers });
    const body = await res.json().catch(() => ({ detail: `HTTP ${res.status}` }));
    if (!res.ok) throw new Error(typeof body.detail === "string" ? body.detail : `HTTP ${res.status}`);
    if (shown !== image) return;  // the drawing changed meanwhile: this status is no longer about it
    document.querySelectorAll(".digit-buttons button").forEach((b) => {
      b.setAttribute("aria-pressed", String(b === button));
    });
    const count = `The store holds ${body.count} sample${body.count === 1 ? "" : "s"}.`;
    status.textContent = body.duplicate ? `Already saved as sample #${body.id} (a ${body.label}). ${count}`
      : `Saved as sample #${body.id}: a ${body.label}. ${count}`;
  } catch (err) {
    if (shown !== image) return;
    status.classList.add("bad");
    status.textContent = `Not saved: ${err.message}`;
  }
}

document.querySelectorAll(".digit-buttons button").forEach((b) => {
  b.addEventListener("click", () => saveSample(b.dataset.label, b));
});

function drawBars(probs, top) {
  $("bars").replaceChildren(...probs.map((q, d) => {
    const li = document.createElement("li");
    li.className = d === top ? "top" : "";
    li.setAttribute("aria-label", `${d}: ${pct(q)}`);
    li.innerHTML = '<span class="label"></span><span class="bar"><span></span></span><span class="value"></span>';
    li.querySelector(".label").textContent = d;
    li.querySelector(".bar span").style.width = `${(100 * q).toFixed(1)}%`;  // CSSOM, allowed by the page's CSP
    li.querySelector(".value").textContent = pct(q);
    return li;
  }));
}

function drawBoxes(n) {
  const c = boxes.getContext("2d");
  c.clearRect(0, 0, boxes.width, boxes.height);
  if (!n) return;
  c.lineWidth = Math.max(2, boxes.height / 150);
  (n.boxes || []).forEach(([x0, y0, x1, y1], i) => {
    c.strokeStyle = n.digits[i].status === "ok" ? "#2a7" : "#d80";
    c.strokeRect(x0 - 4, y0 - 4, x1 - x0 + 8, y1 - y0 + 8);
  });
}

function showNumber(n, drawn) {
  showCorrection(null);  // a number's digits are not corrected one by one
  drawBoxes(drawn ? n : null);  // an upload's boxes would be in its own pixels, not the pad's
  $("bars").replaceChildren();
  showPreview(null);
  $("digits-box").hidden = !n.digits.length;
  if (!n.digits.length) {
    setState("empty", "–", "No ink found: write a number.");
    return;
  }
  const unsure = n.digits.filter((d) => d.status !== "ok").length;
  setState(n.status, n.text, unsure
    ? `Read ${n.digits.length} digits; ${unsure} of them unsure (shown as the best guess).`
    : `Read ${n.digits.length} digit${n.digits.length > 1 ? "s" : ""}.`);
  $("digits").replaceChildren(...n.digits.map((d) => {
    const li = document.createElement("li");
    li.className = d.status;
    const img = document.createElement("img");
    img.src = d.processed_png;
    const guess = d.topk[0].digit;
    img.alt = `digit ${guess} as the network saw it`;
    img.width = img.height = 56;
    const cap = document.createElement("span");
    cap.textContent = `${d.digit === null ? guess + "?" : guess} · ${pct(d.probability)}`;
    li.append(img, cap);
    return li;
  }));
}

// ---------------------------------------------------------------- start-up

fetch("/api/model").then((r) => r.json()).then((m) => {
  const acc = m.test_accuracy == null ? "not measured" : `${Number(m.test_accuracy).toFixed(2)}% on MNIST test (${m.test_forward})`;
  const tuned = m.samples && m.samples.count ? ` Tuned on ${m.samples.count} of your samples.` : "";
  $("model-info").textContent = `Model: ${m.arch} (${m.backend}), ${m.model}, test accuracy ${acc}.${tuned}`;
  collecting = Boolean(m.collect && m.collect.enabled);
}).catch(() => { $("model-info").textContent = "Model information unavailable."; });
