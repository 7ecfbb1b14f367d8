// MFDV-SNN playground: plain JavaScript, no build step, no external assets.
// It calls only the public API, with URLs relative to this page (so a path prefix in front
// of the service keeps working), and sends X-API-Key when one is entered.
"use strict";

const API = {
  models: "../v1/models",
  // One model of the repository, by name ({name}: encodeURIComponent'd).
  modelPredict: "../v1/models/{name}/predict",
  modelProbe: "../v1/models/{name}/attack-probe",
  // A service whose /v1/models has no "default" (one model, before the model repository).
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
  models: [], // /v1/models entries
  defaultName: null,
  routed: false, // the service answers /v1/models/{name}/...: /v1/models says which model is the default
  model: null, // the picked /v1/models entry
  compare: null, // compare mode: the second model's entry; null otherwise
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

// -- the models ------------------------------------------------------------------------------

async function loadModels() {
  for (;;) {
    try {
      return await call(API.models);
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

// The URL a model's predict or probe goes to.
function endpoint(kind, m) {
  if (!state.routed) return kind === "predict" ? API.predict : API.probe;
  return (kind === "predict" ? API.modelPredict : API.modelProbe).replace("{name}", encodeURIComponent(m.name));
}

const byName = (name) => state.models.find((m) => m.name === name) || null;
const deterministic = (m) => !(m.sigma && m.sigma.max > 0);
// The rule `flagged` follows (/v1/models' `flag`: signal and threshold); an older server only has mi_threshold.
const flagOf = (m) => m.flag || { signal: "mutual_information", threshold: m.mi_threshold };
const hasFlag = (m) => (m.flag ? true : m.mi_threshold > 0);
const onMI = (m) => flagOf(m).signal === "mutual_information";
// A union rule (`clauses`: flagged when any fires) or a one-signal rule, as a list of {signal, threshold}.
const clausesOf = (m) => flagOf(m).clauses || [{ signal: flagOf(m).signal, threshold: flagOf(m).threshold }];
const miClause = (m) => clausesOf(m).find((c) => c.signal === "mutual_information");
// The models each image and probe go to: the picked one, then the compared one.
const activeModels = () => (state.compare ? [state.model, state.compare] : [state.model]);
// The suffix of a side's element ids: the picked model's are the page's own, the compared one's end in -b.
const SIDES = ["", "-b"];

function sameList(a, b) {
  return Array.isArray(a) && Array.isArray(b) && a.length === b.length && a.every((x, i) => x === b[i]);
}

// Why a model cannot be compared with the picked one (null: it can).
function incompatibility(m, other) {
  if (m.name === other.name) return "the picked model";
  if (!sameList(m.input_shape, other.input_shape)) return `input ${m.input_shape.join("×")}`;
  if (!sameList(m.class_names, other.class_names)) return "other classes";
  return null;
}

function modelTitle(m) {
  const version = m.version ? ` v${m.version}` : "";
  const isDefault = m.name === state.defaultName ? ", default" : "";
  return `${m.name}${version} (${m.method}${isDefault})`;
}

// The flag rule in words: what the numbers count (at most 5% of correctly classified held-out images flagged).
function flagText(flag, short = false) {
  if (flag.clauses) return flag.clauses.map((c) => flagText(c, short)).join(" or ");
  if (flag.signal === "max_prob") {
    return short ? `flags top p̄ < ${fmt(1 - flag.threshold)}` : `flags a top mean probability below ${fmt(1 - flag.threshold)}`;
  }
  return `flags ${short ? "MI" : "mutual information"} above ${fmt(flag.threshold)}`;
}

function flagRule(m, short = false) {
  if (hasFlag(m)) {
    const rate = m.flag && m.flag.calibration ? m.flag.calibration.rate : null;
    const calibrated = !short && rate !== null ? ` (calibrated to flag at most ${pct(rate)} of correctly classified held-out images)` : "";
    return flagText(flagOf(m), short) + calibrated;
  }
  if (short) return deterministic(m) ? "deterministic: no MI flag" : "no flag threshold";
  return deterministic(m) ? "deterministic: no noise, so no mutual-information flag" : "no calibrated flag threshold";
}

function modelDetails(m) {
  const [c, h, w] = m.input_shape;
  const details = [
    `${m.method} · ${m.arch} · ${m.dataset}`,
    `${c}×${h}×${w} input`,
    `${m.class_names.length} classes`,
  ];
  const accuracy = m.metrics?.clean?.accuracy;
  if (typeof accuracy === "number") details.push(`clean accuracy ${pct(accuracy)}`);
  details.push(flagRule(m), `${m.backend} on ${m.device}`);
  return details.join(" · ");
}

function describeModels() {
  const m = state.model;
  const version = m.version ? ` v${m.version}` : "";
  $("model-info").replaceChildren(el("b", { text: m.name + version }), ` · ${modelDetails(m)}`);
  const info = $("compare-info");
  info.hidden = !state.compare;
  if (state.compare) {
    const b = state.compare;
    info.replaceChildren("compared with ", el("b", { text: b.name + (b.version ? ` v${b.version}` : "") }), ` · ${modelDetails(b)}`);
  }
}

// A copy of a side (#predict-side, #probe-side) for the compared model: every id gets "-b".
function cloneSide(id) {
  const copy = $(id).cloneNode(true);
  for (const node of [copy, ...copy.querySelectorAll("[id]")]) node.id += "-b";
  copy.hidden = true;
  $(id).parentNode.append(copy);
}

// The list of models (/v1/models); `wanted`: the names to keep picked, where still listed.
function listModels(body, wanted) {
  const models = body.models || [];
  if (!models.length) throw new Error("the service lists no model");
  state.models = models;
  // A service with the model repository says which model is the default (null: none loaded) and
  // answers /v1/models/{name}/...; one before it lists its one model, no default, no version.
  state.routed = "default" in body || models.some((m) => "version" in m);
  state.defaultName = body.default ?? models.find((m) => m.default === true)?.name ?? null;

  const picker = $("model");
  picker.replaceChildren(...models.map((m) => el("option", { value: m.name, text: modelTitle(m) })));
  picker.disabled = models.length < 2;
  picker.title = picker.disabled ? "The service serves this one model." : "";
  picker.value = byName(wanted.model)?.name || byName(state.defaultName)?.name || models[0].name;
  fillCompareChoices(wanted.compare || "");
}

function setupModels(body) {
  cloneSide("predict-side");
  cloneSide("probe-side");
  const hash = new URLSearchParams(location.hash.slice(1));
  listModels(body, { model: hash.get("model"), compare: hash.get("compare") });
  applySelection();
}

// The list again (a model was loaded or unloaded: the repository's /v2/repository routes). Picked
// models still listed stay picked; the page follows only when what it sends to changed.
async function refreshModels() {
  const before = activeModels().map((m) => `${m.name}@${m.id}`).join(" ");
  const wanted = { model: state.model.name, compare: state.compare?.name };
  const body = await call(API.models);
  listModels(body, wanted);
  const gone = [wanted.model, wanted.compare].filter((name) => name && !byName(name));
  $("models-status").textContent = gone.length
    ? `${gone.join(" and ")} ${gone.length > 1 ? "are" : "is"} no longer served: the page switched to what is.`
    : `${state.models.length} model${state.models.length > 1 ? "s" : ""} served.`;
  const after = [$("model").value, $("compare-model").value].map(byName).filter(Boolean);
  if (after.map((m) => `${m.name}@${m.id}`).join(" ") !== before) applySelection();
  else {
    state.model = after[0];
    state.compare = after[1] || null;
    describeModels();
  }
}

// A model route's 404: the model was unloaded since the page listed it; list the models again.
function refreshAfterNotFound(errors) {
  if (state.routed && errors.some((e) => e && e.status === 404)) {
    refreshModels().catch((err) => ($("models-status").textContent = `Could not list the models: ${err.message}`));
  }
}

// The compare picker: every other model, those that cannot take the same image disabled with the reason.
function fillCompareChoices(wanted) {
  const picked = byName($("model").value);
  const select = $("compare-model");
  const note = $("compare-note");
  const others = state.models.filter((m) => m.name !== picked.name);
  const options = [el("option", { value: "", text: "nothing: one model" })];
  for (const m of others) {
    const why = incompatibility(m, picked);
    const option = el("option", { value: m.name, text: why ? `${modelTitle(m)}: ${why}` : modelTitle(m) });
    option.disabled = Boolean(why);
    options.push(option);
  }
  select.replaceChildren(...options);
  const usable = others.filter((m) => !incompatibility(m, picked));
  if (!state.routed || !usable.length) {
    select.disabled = true;
    select.value = "";
    note.textContent = !others.length
      ? "Compare mode needs a second model: this service serves one."
      : !state.routed
        ? "Compare mode needs the service's per-model routes (/v1/models/{name}/predict)."
        : "No other model takes the same input and classes as this one.";
    return;
  }
  select.disabled = false;
  select.value = usable.some((m) => m.name === wanted) ? wanted : "";
  note.textContent = "Pick a second model to send every image and probe to both, side by side.";
}

// After a pick: the model panel, the image size, the controls and the layout follow the models,
// the probe's results (for the models before) go, and the image is predicted again.
function applySelection() {
  const m = byName($("model").value);
  const b = $("compare-model").value ? byName($("compare-model").value) : null;
  const resized = !state.model || !sameList(state.model.input_shape, m.input_shape);
  state.model = m;
  state.compare = b;
  const hash = new URLSearchParams();
  if (state.routed && m.name !== state.defaultName) hash.set("model", m.name);
  if (b) hash.set("compare", b.name);
  const fragment = hash.toString();
  if (fragment !== location.hash.slice(1)) history.replaceState(null, "", fragment ? `#${fragment}` : location.pathname + location.search);

  describeModels();
  if (resized) resizeModelCanvas();

  const samples = $("samples");
  const max = Math.min(...activeModels().map((x) => x.samples.max));
  const current = Number(samples.value);
  samples.max = max;
  if (!samples.dataset.set || !(current >= 1 && current <= max)) samples.value = Math.min(m.samples.default, max);
  samples.dataset.set = "1";

  const labels = $("true-label");
  const chosenLabel = labels.value;
  labels.replaceChildren(
    el("option", { value: "", text: "the clean prediction" }),
    ...m.class_names.map((name, i) => el("option", { value: String(i), text: `${i}: ${name}` })),
  );
  if (chosenLabel !== "" && Number(chosenLabel) < m.class_names.length) labels.value = chosenLabel;

  const attack = $("attack");
  const chosenAttack = attack.value;
  attack.replaceChildren();
  for (const [name, spec] of Object.entries(ATTACKS)) {
    if (spec.needsThreshold && !activeModels().every(hasFlag)) continue; // no calibrated detector to evade
    attack.append(el("option", { value: name, text: spec.title }));
  }
  if (chosenAttack && [...attack.options].some((o) => o.value === chosenAttack)) attack.value = chosenAttack;
  else selectAttack();
  if (resized) $("eps").value = state.width <= 28 ? "0.1" : (8 / 255).toFixed(4); // models.attacks.default_eps

  const comparing = Boolean(b);
  $("page").classList.toggle("comparing", comparing);
  if (!comparing) $("predict-summary").hidden = true;
  for (const side of ["predict-side", "probe-side"]) {
    $(`${side}-b`).hidden = !comparing;
  }
  for (const id of ["pred-model", "probe-model"]) {
    for (const [i, s] of SIDES.entries()) {
      const head = $(id + s);
      head.hidden = !comparing;
      const x = activeModels()[i];
      if (!x) continue;
      head.replaceChildren(
        el("span", { class: "tag", text: i ? "B" : "A" }),
        ` ${x.name} `,
        el("span", { class: "sub", text: `${x.method} · ${flagRule(x, true)}` }),
      );
    }
  }
  $("probe-sub").textContent = comparing
    ? "attack this image now, against both models: the same attack, settings and seed"
    : "attack this image now, against the selected model";
  $("predict").textContent = comparing ? "Predict with both" : "Predict";

  clearProbe("The models changed: run the attack again to see what it does to them.");
  if (state.hasImage) predict();
  else clearPrediction();
}

function resizeModelCanvas() {
  [state.channels, state.height, state.width] = state.model.input_shape;
  const had = state.hasImage;
  state.modelCanvas.width = state.width;
  state.modelCanvas.height = state.height;
  for (const s of SIDES) {
    for (const id of ["clean-img", "heat"]) {
      $(id + s).width = state.width;
      $(id + s).height = state.height;
    }
  }
  $("model-view").width = state.width;
  $("model-view").height = state.height;
  $("model-view-caption").textContent = `what the model sees (${state.width}×${state.height}${state.channels === 1 ? ", grey" : ""})`;
  if (had) modelFromSketch(); // the drawing (or the image) again, at the new size
  else clearImage();
}

$("model").addEventListener("change", () => {
  fillCompareChoices($("compare-model").value);
  applySelection();
});
$("compare-model").addEventListener("change", applySelection);
// The picks are in the address (#model=...&compare=...): a link, or the address edited, picks them.
window.addEventListener("hashchange", () => {
  if (!state.model) return;
  const hash = new URLSearchParams(location.hash.slice(1));
  const model = byName(hash.get("model"))?.name || byName(state.defaultName)?.name || state.models[0].name;
  if (model === $("model").value && (hash.get("compare") || "") === $("compare-model").value) return;
  $("model").value = model;
  fillCompareChoices(hash.get("compare") || "");
  applySelection();
});
$("model-form").addEventListener("submit", (ev) => ev.preventDefault());
$("reload-models").addEventListener("click", () => {
  if (!state.model) return;
  refreshModels().catch((err) => ($("models-status").textContent = `Could not list the models: ${err.message}`));
});

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
  renderModelView();
  clearPrediction();
}

function clearPrediction() {
  state.predictSeq++; // a prediction still on its way was for the old image or models
  $("predict").disabled = false;
  for (const s of SIDES) {
    $(`prediction${s}`).hidden = true;
    $(`prediction${s}`).classList.remove("stale");
    showError(`pred-error${s}`, null);
  }
  $("predict-summary").hidden = true;
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

// Request errors, one per model (null: it answered): the same error from every model (a 401, a service
// that does not answer) once, in the panel's own box; otherwise each in its model's column.
function showSideErrors(panelId, sideId, errors) {
  const failed = errors.filter(Boolean);
  const same = failed.length === errors.length && failed.every((e) => e.message === failed[0].message);
  showError(panelId, same ? failed[0] : null);
  errors.forEach((err, i) => showError(sideId + SIDES[i], same ? null : err));
}

// The service must say the model it was asked for answered (a routed service's responses name it).
function checkAnswer(body, m) {
  if (state.routed && typeof body.model === "string" && body.model !== m.name) {
    throw new Error(`Asked ${m.name}, but ${body.model} answered.`);
  }
  return body;
}

async function predict() {
  if (!state.model || !state.hasImage) return;
  const seq = ++state.predictSeq;
  showError("predict-error", null);
  const models = activeModels();
  let samples, seed;
  try {
    samples = readInt("samples", "Samples T", 1, Math.min(...models.map((m) => m.samples.max)));
    seed = readInt("seed", "The seed", 0, MAX_SEED);
  } catch (err) {
    showError("predict-error", err);
    return;
  }
  for (const s of SIDES) $(`prediction${s}`).classList.add("stale"); // until the answer for these settings comes
  $("predict-summary").classList.add("stale");
  const image = await canvasBlob(state.modelCanvas);
  const form = () => {
    const f = new FormData();
    f.append("file", image, "input.png");
    f.append("samples", String(samples));
    f.append("seed", String(seed));
    f.append("return_samples", "true");
    return f;
  };
  const button = $("predict");
  button.disabled = true;
  // The same image, samples and seed to every model at once (the service batches them).
  const results = await Promise.allSettled(
    models.map((m) => call(endpoint("predict", m), { method: "POST", body: form() }).then((b) => checkAnswer(b, m))),
  );
  if (seq !== state.predictSeq) return; // the image, the settings or the models changed meanwhile
  button.disabled = false;
  const bodies = results.map((r) => (r.status === "fulfilled" ? r.value : null));
  bodies.forEach((body, i) => {
    $(`prediction${SIDES[i]}`).classList.remove("stale");
    if (body) renderPrediction(body, models[i], SIDES[i]);
    else $(`prediction${SIDES[i]}`).hidden = true; // no stale answer beside a fresh one
  });
  const errors = results.map((r) => (r.status === "rejected" ? r.reason : null));
  showSideErrors("predict-error", "pred-error", errors);
  renderPredictSummary(models, bodies);
  refreshAfterNotFound(errors);
}

const flagWords = (flags, models) => {
  if (flags.every((f) => !f)) return "neither flags it";
  if (flags.every(Boolean)) return "both flag it";
  return `only ${models[flags.indexOf(true)].name} flags it`;
};

// Compare mode: do the two models agree? Each side's bars also mark the class the other one predicts.
function renderPredictSummary(models, bodies) {
  const box = $("predict-summary");
  box.classList.remove("stale");
  for (const s of SIDES) for (const n of $(`bars${s}`).querySelectorAll(".name.other")) n.classList.remove("other");
  if (models.length < 2 || !bodies.every(Boolean)) {
    box.hidden = true;
    return;
  }
  const [pa, pb] = bodies.map((b) => b.predictions[0]);
  const [a, b] = models;
  const agree = pa.label === pb.label;
  box.className = `banner ${agree ? "agree" : "disagree"}`;
  box.dataset.agree = String(agree);
  const head = agree
    ? `The models agree: both predict ${pa.class_name}`
    : `The models disagree: ${a.name} predicts ${pa.class_name}, ${b.name} predicts ${pb.class_name}`;
  const details = [`p̄ ${fmt(pa.probs[pa.label])} vs ${fmt(pb.probs[pb.label])}`];
  if (!agree) {
    details.push(`${a.name} gives ${pb.class_name} ${fmt(pa.probs[pb.label])}, ${b.name} gives ${pa.class_name} ${fmt(pb.probs[pa.label])}`);
  }
  details.push(`mutual information ${fmt(pa.uncertainty.mutual_information)} vs ${fmt(pb.uncertainty.mutual_information)}`);
  details.push(flagWords([pa.flagged, pb.flagged], models));
  box.replaceChildren(head, el("span", { class: "small", text: ` — ${details.join("; ")}.` }));
  box.hidden = false;
  if (!agree) {
    [[pb, SIDES[0], "B"], [pa, SIDES[1], "A"]].forEach(([other, s, tag]) => {
      const name = $(`bars${s}`).children[3 * other.label];
      name.classList.add("other");
      name.title = `model ${tag}'s prediction`;
    });
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

function renderPrediction(body, m, s = "") {
  const p = body.predictions[0];
  const u = p.uncertainty;
  $("predict-empty").hidden = true;
  $(`prediction${s}`).hidden = false;

  const label = $(`pred-label${s}`);
  label.textContent = p.class_name;
  label.dataset.label = String(p.label);
  $(`pred-prob${s}`).textContent = `p = ${fmt(p.probs[p.label])}`;
  const flag = $(`pred-flag${s}`);
  const miHigh = miClause(m) && p.uncertainty.mutual_information > miClause(m).threshold;
  flag.textContent = p.flagged
    ? miHigh
      ? "flagged: mutual information above the threshold"
      : "flagged: top probability below the threshold"
    : hasFlag(m)
      ? "not flagged"
      : `not flagged (${deterministic(m) ? "deterministic model" : "no threshold"})`;
  flag.className = `chip ${p.flagged ? "warn" : "ok"}`;

  const bars = $(`bars${s}`);
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
    [
      "mutual information",
      fmt(u.mutual_information),
      `epistemic: their difference; ${hasFlag(m) && onMI(m) ? `flagged above ${fmt(miClause(m).threshold)}` : hasFlag(m) ? flagText(flagOf(m), true) : "no flag threshold"}`,
    ],
    ["vote agreement", pct(u.vote_agreement), "share of draws whose argmax is the prediction"],
    ["top-prob std error", fmt(u.top_prob_stderr), "Monte Carlo standard error of p̄ of the prediction"],
  ];
  const tbody = $(`uncertainty${s}`).tBodies[0];
  tbody.replaceChildren(
    ...rows.map(([name, value, note]) =>
      el("tr", {}, el("th", { text: name, title: note }), el("td", { class: "num", text: value }), el("td", { class: "note", text: note })),
    ),
  );
  $(`pred-meta${s}`).textContent =
    `T = ${body.samples} draws, seed ${body.seed}: the same seed gives the same answer. ` +
    `Model ${body.model ?? m.name} (${body.model_id.slice(0, 12)}…), computed in ${fmt(body.timing.compute_ms, 1)} ms ` +
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

// The attack as the probe request gives it; an attack on the flag takes each model's own threshold.
function attackSpec(m) {
  const name = $("attack").value;
  const spec = { name, eps: readNumber("eps", "eps") };
  for (const field of FIELD_NAMES) {
    if (field in ATTACKS[name].fields && $(field).value.trim() !== "") {
      spec[field] = readInt(field, field, 1, 1e9);
    }
  }
  if (ATTACKS[name].needsThreshold) spec.threshold = m.mi_threshold; // the detector-aware attack's MI threshold
  return spec;
}

const probeButtonText = () => (state.compare ? "Run on both" : "Run attack");

// The probe's results go (the models changed); `why` says so where the results were.
function clearProbe(why) {
  state.probeSeq++; // a probe still on its way was for other models
  const button = $("run-probe");
  button.disabled = false;
  button.textContent = probeButtonText();
  const shown = SIDES.some((s) => !$(`probe-result${s}`).hidden);
  for (const s of SIDES) {
    $(`probe-result${s}`).hidden = true;
    $(`probe-result${s}`).classList.remove("stale");
    showError(`probe-side-error${s}`, null);
  }
  $("probe-summary").hidden = true;
  showError("probe-error", null);
  const empty = $("probe-empty");
  if (!empty.dataset.text) empty.dataset.text = empty.textContent;
  empty.textContent = shown && why ? why : empty.dataset.text;
  empty.hidden = false;
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
  const models = activeModels();
  let bodies;
  try {
    const common = {
      inputs: [state.modelCanvas.toDataURL("image/png")],
      judge_samples: readInt("judge", "Judging draws", 1, Math.min(...models.map((m) => m.samples.max))),
      seed: readInt("seed", "The seed", 0, MAX_SEED),
      return_adversarial: true,
    };
    if ($("true-label").value !== "") common.labels = [Number($("true-label").value)];
    bodies = models.map((m) => ({ ...common, attacks: [attackSpec(m)] }));
  } catch (err) {
    showError("probe-error", err);
    return;
  }
  // The pixels sent, to compare the adversarial image with.
  const clean = modelCtx().getImageData(0, 0, state.width, state.height);
  const button = $("run-probe");
  button.disabled = true;
  $("probe-summary").hidden = true;
  for (const s of SIDES) $(`probe-result${s}`).classList.add("stale");
  // One model after the other: attacks share the service's attack workers, and the first result shows sooner.
  const errors = models.map(() => null);
  const reports = models.map(() => null);
  for (const [i, m] of models.entries()) {
    const s = SIDES[i];
    button.textContent = models.length > 1 ? `Running on ${m.name}…` : "Running…";
    try {
      const report = checkAnswer(
        await call(endpoint("probe", m), {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify(bodies[i]),
        }),
        m,
      );
      if (seq !== state.probeSeq) return;
      reports[i] = report;
      await renderProbe(report, clean, m, s);
    } catch (err) {
      if (seq !== state.probeSeq) return;
      errors[i] = err;
      $(`probe-result${s}`).hidden = true;
    }
    $(`probe-result${s}`).classList.remove("stale");
  }
  button.disabled = false;
  button.textContent = probeButtonText();
  showSideErrors("probe-error", "probe-side-error", errors);
  renderProbeSummary(models, reports);
  refreshAfterNotFound(errors);
}
$("probe-form").addEventListener("submit", runProbe);

function loadImage(src, s) {
  return new Promise((resolve, reject) => {
    const img = $(`adv-img${s}`);
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the adversarial image could not be decoded"));
    img.src = src;
  });
}

// What an attack did to one model: held, fooled, or fooled but flagged.
function probeOutcome(report) {
  const r = report.attacks[0]?.inputs[0];
  if (!r) return { kind: "none", text: "did not run" };
  if (!r.success) return { kind: "held", text: `held (still ${className(r.adv_label)})` };
  const how = `${className(r.clean_label)} → ${className(r.adv_label)}`;
  return r.flagged ? { kind: "flagged", text: `fooled (${how}) but flagged` } : { kind: "fooled", text: `fooled (${how}), not flagged` };
}

// Compare mode: the attack's outcome on each model, in one line.
function renderProbeSummary(models, reports) {
  const box = $("probe-summary");
  if (models.length < 2 || !reports.every(Boolean)) {
    box.hidden = true;
    return;
  }
  const outcomes = reports.map(probeOutcome);
  const kinds = outcomes.map((o) => o.kind);
  let head;
  if (kinds.every((k) => k === "held")) head = "Both models held";
  else if (kinds.every((k) => k !== "held" && k !== "none")) head = "Both models were fooled";
  else if (kinds.includes("none")) head = "The attack did not run on both models";
  else head = `Only ${models[kinds.findIndex((k) => k !== "held")].name} was fooled`;
  box.className = `banner ${kinds.includes("fooled") ? "fooled" : kinds.every((k) => k === "held") ? "held" : "disagree"}`;
  box.dataset.outcomes = kinds.join(",");
  box.replaceChildren(head, el("span", { class: "small", text: ` — ${models.map((m, i) => `${m.name}: ${outcomes[i].text}`).join("; ")}.` }));
  box.hidden = false;
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

function drawHeatMap(clean, adv, s) {
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
  const ctx = $(`heat${s}`).getContext("2d");
  const out = ctx.createImageData(state.width, state.height);
  for (let p = 0; p < n; p++) {
    const [r, g, b] = colour(max > 0 ? delta[p] / max : 0);
    out.data.set([r, g, b, 255], 4 * p);
  }
  ctx.putImageData(out, 0, 0);
  $(`heat-scale${s}`).textContent = max > 0 ? `brightest = ${fmt(max)} (×${fmt(1 / max, 1)})` : "no change";
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

async function renderProbe(report, clean, m, s = "") {
  const c = report.clean[0];
  const attack = report.attacks[0];
  $("probe-empty").hidden = true;
  $(`probe-result${s}`).hidden = false;
  if (!attack) {
    $(`probe-result${s}`).hidden = true;
    throw new Error(report.partial_reason || "The attack did not run.");
  }
  const r = attack.inputs[0];

  const verdict = $(`probe-verdict${s}`);
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

  $(`clean-img${s}`).getContext("2d").putImageData(clean, 0, 0);
  $(`clean-label${s}`).textContent = className(c.label);
  $(`adv-label${s}`).textContent = className(r.adv_label);
  const img = await loadImage(`data:image/png;base64,${r.adversarial}`, s);
  const scratch = document.createElement("canvas");
  scratch.width = state.width;
  scratch.height = state.height;
  const sctx = scratch.getContext("2d", { willReadFrequently: true });
  sctx.drawImage(img, 0, 0);
  drawHeatMap(clean, sctx.getImageData(0, 0, state.width, state.height), s);

  $(`flip${s}`).replaceChildren(
    flipRow("clean", "clean", c.flip_prob, c.flip_ci),
    flipRow("adversarial", "adv", r.flip_prob, r.flip_ci),
  );

  const yesNo = (f) => (f === null || f === undefined ? "–" : f ? "yes" : "no");
  const rows = [
    ["prediction", className(c.label), className(r.adv_label)],
    ["p̄ of the true label", fmt(c.mean_probs[c.true_label]), fmt(r.mean_probs[r.true_label])],
    ["flip probability", fmt(c.flip_prob, 2), fmt(r.flip_prob, 2)],
    ["predictive entropy", fmt(c.predictive_entropy), fmt(r.predictive_entropy)],
    ["mutual information", fmt(c.mutual_information), fmt(r.mutual_information)],
    [`flagged (${report.flag ? flagText(report.flag, true) : `MI > ${fmt(report.mi_threshold)}`})`, yesNo(c.flagged), yesNo(r.flagged)],
  ];
  $(`before-after${s}`).tBodies[0].replaceChildren(
    ...rows.map(([name, a, b]) => el("tr", {}, el("td", { text: name }), el("td", { class: "num", text: a }), el("td", { class: "num", text: b }))),
  );
  $(`probe-meta${s}`).textContent =
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

loadModels()
  .then(setupModels)
  .catch((err) => {
    $("model-info").textContent = `Cannot reach the model: ${err.message}`;
  });
