// MFDV-SNN playground: plain JavaScript, no build step, no external assets.
// It calls only the public API, with URLs relative to this page (so a path prefix in front
// of the service keeps working), and sends X-API-Key when one is entered.
"use strict";

const API = {
  models: "../v1/models",
  predict: "../v1/predict",
  probe: "../v1/attack-probe",
};

// The attacks the probe panel offers and the settings it shows for each, prefilled with the
// specs' defaults (models/attacks; docs/attack-probe.md). The server validates every value.
const ATTACKS = {
  fgsm: { title: "FGSM", fields: { eot: 16 }, help: "One signed-gradient step of size eps; the gradient averages EOT noise draws (one backward pass)." },
  pgd: { title: "PGD (L∞)", fields: { steps: 20, eot: 16 }, help: "Projected gradient descent in the L∞ ball, steps of eps/4 from a random start, EOT gradients." },
  pgd_l2: { title: "PGD (L2)", fields: { steps: 20, eot: 16 }, help: "PGD in the L2 ball of radius eps (try eps around 1-2 for 28×28 images)." },
  surrogate: { title: "noise-free surrogate", fields: { steps: 20 }, help: "PGD on the network with its noise switched off, judged with the noise on." },
  apgd: { title: "APGD-CE", fields: { steps: 100, eot: 20 }, help: "AutoAttack's APGD with cross-entropy loss and EOT draws (slower: 100 steps by default)." },
  square: { title: "Square (black box)", fields: { queries: 1000 }, help: "Score-based Square attack: no gradients, only queries of the mean probabilities." },
  evade_mi: { title: "PGD evading the MI detector", fields: { steps: 50, eot: 16 }, help: "EOT-PGD that keeps the mutual information under the model's flagging threshold.", needsThreshold: true },
};
const FIELD_NAMES = ["eot", "steps", "queries"];
const MAX_SEED = Number.MAX_SAFE_INTEGER; // the API takes up to 2^63-1; the page keeps seeds exact in JSON
const SKETCH_BG = "#000000";

const $ = (id) => document.getElementById(id);

const state = {
  model: null, // /v1/models entry
  channels: 1,
  height: 28,
  width: 28,
  modelCanvas: document.createElement("canvas"), // the image at the model's size: what is sent
  hasImage: false,
  drawing: false,
  predictSeq: 0,
  probeSeq: 0,
};

// -- HTTP ------------------------------------------------------------------------------------

function headers(extra = {}) {
  const h = { Accept: "application/json", ...extra };
  const key = $("api-key").value.trim();
  if (key) h["X-API-Key"] = key;
  return h;
}

async function call(url, init = {}) {
  let response;
  try {
    response = await fetch(url, { ...init, headers: headers(init.headers) });
  } catch (err) {
    throw new Error(`The service did not answer (${err.message}).`);
  }
  const text = await response.text();
  let body = null;
  try {
    body = JSON.parse(text);
  } catch {
    body = null;
  }
  if (!response.ok) {
    let message = body && typeof body.error === "string" ? body.error : `HTTP ${response.status}`;
    if (response.status === 401) message += "\nEnter the server's key in the API key field at the top.";
    if (response.status === 503 && response.headers.get("Retry-After")) {
      message += `\nTry again in ${response.headers.get("Retry-After")} s.`;
    }
    const err = new Error(message);
    err.status = response.status;
    throw err;
  }
  return body;
}

function showError(id, err) {
  const box = $(id);
  if (err) {
    box.textContent = err.message || String(err);
    box.hidden = false;
  } else {
    box.hidden = true;
    box.textContent = "";
  }
}

// -- formatting ------------------------------------------------------------------------------

function fmt(x, digits = 3) {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  if (x !== 0 && Math.abs(x) < 10 ** -digits) return x.toExponential(1);
  return x.toFixed(digits);
}
const pct = (x) => `${(100 * x).toFixed(1)}%`;
const className = (label) => (state.model ? state.model.class_names[label] : String(label)) ?? String(label);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "style") node.setAttribute("style", v);
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

// -- the model -------------------------------------------------------------------------------

async function loadModel() {
  for (;;) {
    try {
      const body = await call(API.models);
      return body.models[0];
    } catch (err) {
      if (err.status === 503) {
        $("model-info").textContent = "The model is loading… (retrying)";
        await new Promise((r) => setTimeout(r, 2000));
        continue;
      }
      throw err;
    }
  }
}

function describeModel(m) {
  const [c, h, w] = m.input_shape;
  const details = [
    `${m.method} · ${m.arch} · ${m.dataset}`,
    `${c}×${h}×${w} input`,
    `${m.class_names.length} classes`,
    `${m.backend} on ${m.device}`,
  ];
  $("model-info").replaceChildren(el("b", { text: m.name }), ` · ${details.join(" · ")}`);
}

function setupModel(m) {
  state.model = m;
  [state.channels, state.height, state.width] = m.input_shape;
  state.modelCanvas.width = state.width;
  state.modelCanvas.height = state.height;
  for (const id of ["model-view", "clean-img", "heat"]) {
    $(id).width = state.width;
    $(id).height = state.height;
  }
  $("model-view-caption").textContent = `what the model sees (${state.width}×${state.height}${state.channels === 1 ? ", grey" : ""})`;
  describeModel(m);

  const samples = $("samples");
  samples.max = m.samples.max;
  samples.value = m.samples.default;

  const labels = $("true-label");
  m.class_names.forEach((name, i) => labels.append(el("option", { value: String(i), text: `${i}: ${name}` })));

  const attack = $("attack");
  for (const [name, spec] of Object.entries(ATTACKS)) {
    if (spec.needsThreshold && !(m.mi_threshold > 0)) continue; // no calibrated detector to evade
    attack.append(el("option", { value: name, text: spec.title }));
  }
  $("eps").value = state.width <= 28 ? "0.1" : (8 / 255).toFixed(4); // models.attacks.default_eps
  selectAttack();
  clearImage();
}

// -- the image: drawing, files, drops, paste --------------------------------------------------

// Read back for every heat map: ask for a context that keeps its pixels on the CPU.
const modelCtx = () => state.modelCanvas.getContext("2d", { willReadFrequently: true });

const sketch = $("sketch");
const sketchCtx = sketch.getContext("2d");

function renderModelView() {
  const view = $("model-view").getContext("2d");
  view.clearRect(0, 0, state.width, state.height);
  view.drawImage(state.modelCanvas, 0, 0);
}

function clearImage() {
  sketchCtx.fillStyle = SKETCH_BG;
  sketchCtx.fillRect(0, 0, sketch.width, sketch.height);
  const m = modelCtx();
  m.fillStyle = SKETCH_BG;
  m.fillRect(0, 0, state.width, state.height);
  state.hasImage = false;
  state.predictSeq++; // a prediction still on its way was for the old image
  $("predict").disabled = false;
  renderModelView();
  $("prediction").hidden = true;
  $("predict-empty").hidden = false;
  showError("predict-error", null);
}

// Paint an image source onto the model-sized canvas (scaled smoothly; same size: pixel for pixel).
function paintModel(source) {
  const m = modelCtx();
  m.imageSmoothingEnabled = true;
  m.imageSmoothingQuality = "high";
  m.fillStyle = SKETCH_BG;
  m.fillRect(0, 0, state.width, state.height);
  m.drawImage(source, 0, 0, state.width, state.height);
}

function modelFromSketch() {
  paintModel(sketch);
  renderModelView();
}

function sketchFromModel() {
  sketchCtx.imageSmoothingEnabled = false;
  sketchCtx.fillStyle = SKETCH_BG;
  sketchCtx.fillRect(0, 0, sketch.width, sketch.height);
  sketchCtx.drawImage(state.modelCanvas, 0, 0, sketch.width, sketch.height);
}

async function loadFile(file) {
  if (!file) return;
  showError("predict-error", null);
  if (!/^image\//.test(file.type)) {
    showError("predict-error", new Error(`${file.name || "That file"} is not an image (${file.type || "unknown type"}).`));
    return;
  }
  let bitmap;
  try {
    bitmap = await createImageBitmap(file);
  } catch {
    showError("predict-error", new Error(`${file.name || "That file"} could not be decoded as an image.`));
    return;
  }
  paintModel(bitmap);
  bitmap.close();
  sketchFromModel();
  renderModelView();
  state.hasImage = true;
  predict();
}

function pointerPos(ev) {
  const r = sketch.getBoundingClientRect();
  return [((ev.clientX - r.left) / r.width) * sketch.width, ((ev.clientY - r.top) / r.height) * sketch.height];
}

sketch.addEventListener("pointerdown", (ev) => {
  if (!state.model) return;
  state.drawing = true;
  sketch.setPointerCapture(ev.pointerId);
  const [x, y] = pointerPos(ev);
  sketchCtx.strokeStyle = "#ffffff";
  sketchCtx.fillStyle = "#ffffff";
  sketchCtx.lineWidth = Number($("brush").value);
  sketchCtx.lineCap = "round";
  sketchCtx.lineJoin = "round";
  sketchCtx.beginPath();
  sketchCtx.arc(x, y, sketchCtx.lineWidth / 2, 0, 2 * Math.PI);
  sketchCtx.fill();
  sketchCtx.beginPath();
  sketchCtx.moveTo(x, y);
});
sketch.addEventListener("pointermove", (ev) => {
  if (!state.drawing) return;
  const [x, y] = pointerPos(ev);
  sketchCtx.lineTo(x, y);
  sketchCtx.stroke();
  modelFromSketch();
});
function endStroke() {
  if (!state.drawing) return;
  state.drawing = false;
  state.hasImage = true;
  modelFromSketch();
  predict();
}
sketch.addEventListener("pointerup", endStroke);
sketch.addEventListener("pointercancel", endStroke);

$("file").addEventListener("change", (ev) => {
  loadFile(ev.target.files[0]);
  ev.target.value = ""; // choosing the same file again loads it again
});
const drop = $("drop");
for (const type of ["dragenter", "dragover"]) {
  drop.addEventListener(type, (ev) => {
    ev.preventDefault();
    drop.classList.add("over");
    $("drop-overlay").hidden = false;
  });
}
for (const type of ["dragleave", "drop"]) {
  drop.addEventListener(type, () => {
    drop.classList.remove("over");
    $("drop-overlay").hidden = true;
  });
}
drop.addEventListener("drop", (ev) => {
  ev.preventDefault();
  loadFile(ev.dataTransfer.files[0]);
});
drop.addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" || ev.key === " ") {
    ev.preventDefault();
    $("file").click();
  }
});
window.addEventListener("paste", (ev) => {
  const item = [...(ev.clipboardData?.items || [])].find((i) => i.type.startsWith("image/"));
  if (item) loadFile(item.getAsFile());
});
$("clear").addEventListener("click", clearImage);

// -- prediction ------------------------------------------------------------------------------

function readInt(id, what, min, max) {
  const text = $(id).value.trim();
  if (!/^\d+$/.test(text)) throw new Error(`${what} must be a whole number.`);
  const v = Number(text);
  if (v < min || v > max) throw new Error(`${what} must be between ${min} and ${max}; got ${text}.`);
  return v;
}

function readNumber(id, what) {
  const v = Number($(id).value);
  if ($(id).value.trim() === "" || !Number.isFinite(v)) throw new Error(`${what} must be a number.`);
  return v;
}

function canvasBlob(canvas) {
  return new Promise((resolve, reject) =>
    canvas.toBlob((b) => (b ? resolve(b) : reject(new Error("could not encode the image"))), "image/png"),
  );
}

async function predict() {
  if (!state.model || !state.hasImage) return;
  const seq = ++state.predictSeq;
  showError("predict-error", null);
  let samples, seed;
  try {
    samples = readInt("samples", "Samples T", 1, state.model.samples.max);
    seed = readInt("seed", "The seed", 0, MAX_SEED);
  } catch (err) {
    showError("predict-error", err);
    return;
  }
  const form = new FormData();
  form.append("file", await canvasBlob(state.modelCanvas), "input.png");
  form.append("samples", String(samples));
  form.append("seed", String(seed));
  form.append("return_samples", "true");
  const button = $("predict");
  button.disabled = true;
  try {
    const body = await call(API.predict, { method: "POST", body: form });
    if (seq === state.predictSeq) renderPrediction(body);
  } catch (err) {
    if (seq === state.predictSeq) showError("predict-error", err);
  } finally {
    if (seq === state.predictSeq) button.disabled = false;
  }
}

function quantile(sorted, q) {
  if (sorted.length === 1) return sorted[0];
  const pos = (sorted.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}

function spread(draws, k) {
  // Per-class spread over the T draws: std, 5th and 95th percentiles.
  const vals = draws.map((d) => d[k]).sort((a, b) => a - b);
  const mean = vals.reduce((s, v) => s + v, 0) / vals.length;
  const sd = Math.sqrt(vals.reduce((s, v) => s + (v - mean) ** 2, 0) / vals.length);
  return { sd, lo: quantile(vals, 0.05), hi: quantile(vals, 0.95) };
}

function renderPrediction(body) {
  const p = body.predictions[0];
  const u = p.uncertainty;
  const threshold = state.model.mi_threshold;
  $("predict-empty").hidden = true;
  $("prediction").hidden = false;

  const label = $("pred-label");
  label.textContent = p.class_name;
  label.dataset.label = String(p.label);
  $("pred-prob").textContent = `p = ${fmt(p.probs[p.label])}`;
  const flag = $("pred-flag");
  flag.textContent = p.flagged ? "flagged: mutual information above the threshold" : "not flagged";
  flag.className = `chip ${p.flagged ? "warn" : "ok"}`;

  const bars = $("bars");
  bars.replaceChildren();
  p.probs.forEach((mean, k) => {
    const s = p.draws ? spread(p.draws, k) : { sd: 0, lo: mean, hi: mean };
    const top = k === p.label ? " top" : "";
    const track = el("div", { class: `track${top}`, role: "listitem", "aria-label": `${className(k)}: ${fmt(mean)}` });
    track.append(
      el("div", { class: "band", style: `left:${100 * s.lo}%;width:${Math.max(100 * (s.hi - s.lo), 0)}%` }),
      el("div", { class: "bar", style: `width:${100 * mean}%` }),
    );
    if (s.sd > 0.002) {
      const lo = Math.max(mean - s.sd, 0);
      const hi = Math.min(mean + s.sd, 1);
      track.append(el("div", { class: "whisker", style: `left:${100 * lo}%;width:${100 * (hi - lo)}%` }));
    }
    bars.append(
      el("div", { class: `name${top}`, text: className(k) }),
      track,
      el("div", { class: "value", text: `${fmt(mean)} ± ${s.sd < 1e-9 ? "0" : fmt(s.sd)}` }), // float32 rounding is not spread
    );
  });

  const rows = [
    ["predictive entropy", fmt(u.predictive_entropy), "total uncertainty H[p̄], nats"],
    ["expected entropy", fmt(u.expected_entropy), "aleatoric: mean entropy of single draws"],
    ["mutual information", fmt(u.mutual_information), `epistemic: their difference; flagged above ${fmt(threshold)}`],
    ["vote agreement", pct(u.vote_agreement), "share of draws whose argmax is the prediction"],
    ["top-prob std error", fmt(u.top_prob_stderr), "Monte Carlo standard error of p̄ of the prediction"],
  ];
  const tbody = $("uncertainty").tBodies[0];
  tbody.replaceChildren(
    ...rows.map(([name, value, note]) =>
      el("tr", {}, el("th", { text: name }), el("td", { class: "num", text: value }), el("td", { class: "note", text: note })),
    ),
  );
  $("pred-meta").textContent =
    `T = ${body.samples} draws, seed ${body.seed}: the same seed gives the same answer. ` +
    `Model ${body.model_id.slice(0, 12)}…, computed in ${fmt(body.timing.compute_ms, 1)} ms ` +
    `(batch of ${body.timing.batch_size}).`;
}

$("predict").addEventListener("click", predict);
$("reseed").addEventListener("click", () => {
  $("seed").value = String(Math.floor(Math.random() * 1e9));
  predict();
});
for (const id of ["samples", "seed"]) $(id).addEventListener("change", predict);

// -- attack probe ----------------------------------------------------------------------------

function selectAttack() {
  const spec = ATTACKS[$("attack").value];
  if (!spec) return;
  for (const name of FIELD_NAMES) {
    const label = document.querySelector(`[data-field="${name}"]`);
    label.hidden = !(name in spec.fields);
    $(name).value = name in spec.fields ? String(spec.fields[name]) : "";
  }
  $("attack-help").textContent = spec.help;
}
$("attack").addEventListener("change", selectAttack);

function attackSpec() {
  const name = $("attack").value;
  const spec = { name, eps: readNumber("eps", "eps") };
  for (const field of FIELD_NAMES) {
    if (field in ATTACKS[name].fields && $(field).value.trim() !== "") {
      spec[field] = readInt(field, field, 1, 1e9);
    }
  }
  if (ATTACKS[name].needsThreshold) spec.threshold = state.model.mi_threshold;
  return spec;
}

async function runProbe(ev) {
  ev.preventDefault();
  if (!state.model) return;
  showError("probe-error", null);
  if (!state.hasImage) {
    showError("probe-error", new Error("Load or draw an image first."));
    return;
  }
  const seq = ++state.probeSeq;
  let body;
  try {
    body = {
      inputs: [state.modelCanvas.toDataURL("image/png")],
      attacks: [attackSpec()],
      judge_samples: readInt("judge", "Judging draws", 1, state.model.samples.max),
      seed: readInt("seed", "The seed", 0, MAX_SEED),
      return_adversarial: true,
    };
  } catch (err) {
    showError("probe-error", err);
    return;
  }
  if ($("true-label").value !== "") body.labels = [Number($("true-label").value)];
  // The pixels sent, to compare the adversarial image with.
  const clean = modelCtx().getImageData(0, 0, state.width, state.height);
  const button = $("run-probe");
  button.disabled = true;
  button.textContent = "Running…";
  try {
    const report = await call(API.probe, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    if (seq === state.probeSeq) await renderProbe(report, clean);
  } catch (err) {
    if (seq === state.probeSeq) showError("probe-error", err);
  } finally {
    if (seq === state.probeSeq) {
      button.disabled = false;
      button.textContent = "Run attack";
    }
  }
}
$("probe-form").addEventListener("submit", runProbe);

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const img = $("adv-img");
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the adversarial image could not be decoded"));
    img.src = src;
  });
}

// Model-channel values of an RGBA ImageData: grey (PIL's "L" conversion) or R, G, B.
function channelValues(data, i) {
  const [r, g, b] = [data[i], data[i + 1], data[i + 2]];
  if (state.channels === 1) return [(r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16];
  return [r, g, b];
}

// A perceptual dark-to-bright colour map (inferno-like), t in [0, 1].
const STOPS = [
  [0, 0, 4], [59, 15, 112], [140, 41, 129], [222, 73, 104], [254, 159, 109], [252, 253, 191],
];
function colour(t) {
  const x = Math.min(Math.max(t, 0), 1) * (STOPS.length - 1);
  const i = Math.min(Math.floor(x), STOPS.length - 2);
  const f = x - i;
  return STOPS[i].map((c, j) => Math.round(c + (STOPS[i + 1][j] - c) * f));
}

function drawHeatMap(clean, adv) {
  const n = state.width * state.height;
  const delta = new Float32Array(n);
  let max = 0;
  for (let p = 0; p < n; p++) {
    const a = channelValues(adv.data, 4 * p);
    const c = channelValues(clean.data, 4 * p);
    let d = 0;
    for (let j = 0; j < a.length; j++) d = Math.max(d, Math.abs(a[j] - c[j]) / 255);
    delta[p] = d;
    max = Math.max(max, d);
  }
  const ctx = $("heat").getContext("2d");
  const out = ctx.createImageData(state.width, state.height);
  for (let p = 0; p < n; p++) {
    const [r, g, b] = colour(max > 0 ? delta[p] / max : 0);
    out.data.set([r, g, b, 255], 4 * p);
  }
  ctx.putImageData(out, 0, 0);
  $("heat-scale").textContent = max > 0 ? `brightest = ${fmt(max)} (×${fmt(1 / max, 1)})` : "no change";
}

function flipRow(name, cls, flipProb, ci) {
  const track = el("div", { class: "track" });
  track.append(
    el("div", { class: "ci", style: `left:${100 * ci[0]}%;width:${100 * (ci[1] - ci[0])}%` }),
    el("div", { class: "dot", style: `left:${100 * flipProb}%` }),
  );
  const row = el("div", { class: cls, style: "display:contents" });
  row.append(el("div", { text: name }), track, el("div", { class: "value", text: `${fmt(flipProb, 2)} [${fmt(ci[0], 2)}, ${fmt(ci[1], 2)}]` }));
  return row;
}

async function renderProbe(report, clean) {
  const c = report.clean[0];
  const attack = report.attacks[0];
  $("probe-empty").hidden = true;
  $("probe-result").hidden = false;
  if (!attack) {
    showError("probe-error", new Error(report.partial_reason || "The attack did not run."));
    $("probe-result").hidden = true;
    return;
  }
  const r = attack.inputs[0];

  const verdict = $("probe-verdict");
  verdict.className = `banner ${r.success ? "fooled" : "held"}`;
  verdict.replaceChildren(
    r.success
      ? `Fooled: ${className(r.clean_label)} → ${className(r.adv_label)}`
      : `Held: still ${className(r.adv_label)}`,
    el("span", {
      class: "small",
      text: ` — ${ATTACKS[attack.name]?.title || attack.name}, eps ${fmt(attack.eps)}, true label ${className(r.true_label)}` +
        (report.partial ? ` (partial: ${report.partial_reason})` : ""),
    }),
  );

  $("clean-img").getContext("2d").putImageData(clean, 0, 0);
  $("clean-label").textContent = className(c.label);
  $("adv-label").textContent = className(r.adv_label);
  const img = await loadImage(`data:image/png;base64,${r.adversarial}`);
  const scratch = document.createElement("canvas");
  scratch.width = state.width;
  scratch.height = state.height;
  const sctx = scratch.getContext("2d", { willReadFrequently: true });
  sctx.drawImage(img, 0, 0);
  drawHeatMap(clean, sctx.getImageData(0, 0, state.width, state.height));

  $("flip").replaceChildren(
    flipRow("clean", "clean", c.flip_prob, c.flip_ci),
    flipRow("adversarial", "adv", r.flip_prob, r.flip_ci),
  );

  const flagText = (f) => (f === null || f === undefined ? "–" : f ? "yes" : "no");
  const rows = [
    ["prediction", className(c.label), className(r.adv_label)],
    ["p̄ of the true label", fmt(c.mean_probs[c.true_label]), fmt(r.mean_probs[r.true_label])],
    ["flip probability", fmt(c.flip_prob, 2), fmt(r.flip_prob, 2)],
    ["predictive entropy", fmt(c.predictive_entropy), fmt(r.predictive_entropy)],
    ["mutual information", fmt(c.mutual_information), fmt(r.mutual_information)],
    [`flagged (MI > ${fmt(report.mi_threshold)})`, flagText(c.flagged), flagText(r.flagged)],
  ];
  $("before-after").tBodies[0].replaceChildren(
    ...rows.map(([name, a, b]) => el("tr", {}, el("td", { text: name }), el("td", { class: "num", text: a }), el("td", { class: "num", text: b }))),
  );
  $("probe-meta").textContent =
    `Perturbation: L∞ ${fmt(r.linf)}, L2 ${fmt(r.l2)}, ${r.l0} of ${state.channels * state.width * state.height} values changed; ` +
    `${r.fools_after_rounding ? "still fools" : "does not fool"} after rounding to 8-bit pixels. ` +
    `${attack.grad_evals} backward passes, ${attack.draws} noise draws, ${attack.queries} queries, ` +
    `${fmt(attack.wall_time_s, 2)} s; judged by ${report.judge_samples} fresh draws, seed ${report.seed}.`;
}

// -- start -----------------------------------------------------------------------------------

const KEY_STORE = "mfdv-api-key";
$("api-key").value = sessionStorage.getItem(KEY_STORE) || "";
$("api-key").addEventListener("change", () => sessionStorage.setItem(KEY_STORE, $("api-key").value.trim()));
$("key-form").addEventListener("submit", (ev) => ev.preventDefault());

loadModel()
  .then(setupModel)
  .catch((err) => {
    $("model-info").textContent = `Cannot reach the model: ${err.message}`;
  });
