// The "Explain" panel: where the network looked and what each convolution saw, for the page's
// current digit. Collapsed, it costs nothing: a request goes only while it is open.
"use strict";

const explainPanel = (() => {
  const $ = (id) => document.getElementById(id);
  const panel = $("explain");
  let last = null;     // the newest {blob, name} the page predicted
  let seq = 0;         // answers to older requests are dropped
  let inFlight = false, again = false;

  function update(blob, name) {
    last = { blob, name };
    if (panel.open) request();
  }

  function clear() {
    last = null;
    seq++;
    $("explain-sentence").textContent = "Draw a digit to see where the network looked.";
    $("explain-heat").getContext("2d").clearRect(0, 0, 28, 28);
    $("explain-stages").replaceChildren();
  }

  async function request() {
    if (!last) return;
    if (inFlight) { again = true; return; }  // one at a time; the newest drawing goes next
    inFlight = true;
    const id = ++seq;
    const form = new FormData();
    form.append("file", last.blob, last.name);
    try {
      const res = await fetch("/api/explain", { method: "POST", body: form });
      const body = await res.json().catch(() => ({ detail: `HTTP ${res.status}` }));
      if (id !== seq) return;
      if (!res.ok) throw new Error(typeof body.detail === "string" ? body.detail : `HTTP ${res.status}`);
      show(body);
    } catch (err) {
      if (id === seq) $("explain-sentence").textContent = `No explanation: ${err.message}`;
    } finally {
      inFlight = false;
      if (again) { again = false; request(); }
    }
  }

  function show(body) {
    const e = body.explanation;
    if (!e) { clear(); $("explain-sentence").textContent = "No ink found: nothing to explain."; return; }
    $("explain-sentence").textContent = e.sentence[0].toUpperCase() + e.sentence.slice(1);
    drawHeat($("explain-heat"), e.attribution, body.prediction.processed_png);
    $("explain-stages").replaceChildren(...e.stages.map(stageStrip));
    panel.dataset.drawn = "true";
  }

  // Red where a pixel raised the digit's score, blue where it lowered it, over the 28x28 it saw.
  function drawHeat(canvas, attribution, processedPng) {
    const ctx = canvas.getContext("2d");
    const img = new Image();
    img.onload = () => {
      ctx.globalAlpha = 1;
      ctx.drawImage(img, 0, 0, 28, 28);
      const over = ctx.getImageData(0, 0, 28, 28);
      for (let y = 0; y < 28; y++) for (let x = 0; x < 28; x++) {
        const a = attribution[y][x], i = 4 * (28 * y + x), grey = over.data[i] * 0.5;
        const t = Math.min(1, Math.abs(a) * 1.5);
        over.data[i] = a > 0 ? grey + (255 - grey) * t : grey * (1 - t);
        over.data[i + 1] = grey * (1 - t);
        over.data[i + 2] = a < 0 ? grey + (255 - grey) * t : grey * (1 - t);
        over.data[i + 3] = 255;
      }
      ctx.putImageData(over, 0, 0);
    };
    img.src = processedPng;
  }

  function stageStrip(stage) {
    const fig = document.createElement("figure");
    fig.className = "stage";
    const row = document.createElement("div");
    row.className = "maps";
    for (const [k, map] of stage.maps.entries()) row.append(mapCanvas(map, `${stage.name} channel ${stage.channels[k]}`));
    const cap = document.createElement("figcaption");
    cap.textContent = `${stage.name}: the ${stage.maps.length} strongest of ${stage.shape[0]} channels (${stage.shape[1]}×${stage.shape[2]})`;
    fig.append(row, cap);
    return fig;
  }

  function mapCanvas(map, label) {
    const h = map.length, w = map[0].length;
    const c = document.createElement("canvas");
    c.width = w; c.height = h;
    c.setAttribute("role", "img");
    c.setAttribute("aria-label", label);
    const ctx = c.getContext("2d");
    const data = ctx.createImageData(w, h);
    for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) {
      const v = Math.round(255 * map[y][x]), i = 4 * (w * y + x);
      data.data[i] = v; data.data[i + 1] = Math.round(v * 0.6); data.data[i + 2] = Math.round(v * 0.2); data.data[i + 3] = 255;
    }
    ctx.putImageData(data, 0, 0);
    return c;
  }

  panel.addEventListener("toggle", () => { if (panel.open) request(); });
  clear();
  return { update, clear };
})();
