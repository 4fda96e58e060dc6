// diffuseg review page: plain JS, no build step. Arrays come raw from /review/api/jobs/{id}/array/*
// (C order, shape in X-Shape); a 2D image is [H, W], a 3D one [H, W, D] shown slice by slice.
"use strict";

const $ = (id) => document.getElementById(id);
const jobId = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop());
const params = new URLSearchParams(location.search);
if (params.get("token")) sessionStorage.setItem("diffuseg_token", params.get("token"));
const token = sessionStorage.getItem("diffuseg_token");
const authHeaders = token ? { Authorization: "Bearer " + token } : {};
const api = "/review/api/jobs/" + encodeURIComponent(jobId);
const MODE_COLORS = [[255, 0, 255], [0, 200, 255], [255, 160, 0], [120, 255, 120], [255, 255, 255]];
// consensus contour of label 1, 2, ... (label 1 keeps the binary page's yellow)
const LABEL_COLORS = [[255, 230, 0], [190, 110, 255], [255, 120, 0], [0, 255, 170], [255, 150, 200],
                      [150, 200, 255], [200, 255, 90], [255, 255, 255]];
const labelColor = (k) => LABEL_COLORS[(k - 1) % LABEL_COLORS.length];
const rgb = ([r, g, b]) => `rgb(${r},${g},${b})`;
const UNC_KINDS = ["entropy", "mutual_information", "variance"];
const MAX_ZOOM = 32;  // screen pixels per image pixel
const FLOOR = 0.1;  // probability and uncertainty below this are not drawn
// colour scale 0..1 of each map: variance (of probabilities in [0, 1]) is at most 0.25
const UNC_SCALE = { entropy: 1, mutual_information: 1, variance: 4 };

const S = {
  meta: null, H: 0, W: 0, D: 1, z: 0, source: "output",
  image: null, consensus: null, samples: null, maps: {}, nSamples: 0,
  working: null, inside: null, outside: null, startFrom: "consensus",
  undo: [], sample: 0, shownMode: -1, zoom: 6, width: 1, level: 0,
  stroke: null, dirty: false,
  label: 1,  // the active label: brush paints it, eraser clears it, marks and agreement are about it
  labels: [],  // [{value, name}] of the foreground labels (binary: one)
};

function setStatus(text) { $("status").textContent = text; }

async function getJSON(url, options = {}) {
  const res = await fetch(url, { ...options, headers: { ...authHeaders, ...(options.headers || {}) } });
  if (!res.ok) {
    let detail = res.statusText;
    try { detail = (await res.json()).detail; } catch (e) { /* not JSON */ }
    throw new Error(res.status + ": " + detail);
  }
  return res.json();
}

function postJSON(url, body) {
  return getJSON(url, { method: "POST", headers: { "Content-Type": "application/json" },
                        body: JSON.stringify(body || {}) });
}

async function getArray(name) {
  const res = await fetch(api + "/array/" + name + "?source=" + S.source, { headers: authHeaders });
  if (!res.ok) throw new Error("array " + name + ": " + res.status);
  const buf = await res.arrayBuffer();
  const dtype = res.headers.get("X-Dtype");
  return dtype === "float32" ? new Float32Array(buf) : new Uint8Array(buf);
}

function toBase64(bytes) {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(s);
}

const idx = (r, c) => (r * S.W + c) * S.D + S.z;

// ---------------------------------------------------------------- loading
async function loadSamples() {
  S.meta = await getJSON(api + "?source=" + S.source);
  const shape = S.meta.shape;
  S.H = shape[0]; S.W = shape[1]; S.D = shape.length > 2 ? shape[2] : 1;
  S.nSamples = S.meta.n_samples;
  S.labels = S.meta.labels || [{ value: 1, name: "foreground" }];
  renderLabelSelector();
  const [consensus, samples, probability, entropy, mi, variance] = await Promise.all(
    ["consensus", "samples", "probability", "entropy", "mutual_information", "variance"]
      .map(getArray));
  S.consensus = consensus; S.samples = samples;
  S.maps = { probability, entropy, mutual_information: mi, variance };
  S.sample = Math.min(S.sample, S.nSamples - 1);
  $("agree-k").max = S.nSamples;
  if (+$("agree-k").value > S.nSamples) $("agree-k").value = S.nSamples;
  renderModes();
  updateLabels();
}

async function init() {
  $("job-id").textContent = jobId;
  try {
    const me = await getJSON("/review/api/me");
    $("reviewer").textContent = "Reviewer: " + me.user;
    await postJSON(api + "/view");
    await loadSamples();
    S.image = await getArray("image");
  } catch (err) {
    setStatus(String(err.message).startsWith("401")
      ? "Not signed in: open this page with ?token=YOUR_TOKEN" : "Error: " + err.message);
    document.body.dataset.state = "error";
    return;
  }
  const n = S.H * S.W * S.D;
  S.inside = new Uint8Array(n); S.outside = new Uint8Array(n);
  startFrom("consensus", S.consensus, false);
  $("slice").max = S.D - 1; S.z = Math.floor(S.D / 2); $("slice").value = S.z;
  $("slicebar").style.visibility = S.D > 1 ? "visible" : "hidden";
  resetView();
  if (S.meta.review) showDecision(S.meta.review);
  document.body.dataset.state = "ready";
  setStatus(S.meta.job && S.meta.job.input_name ? S.meta.job.input_name : "");
  showStudy(S.meta.job || {});
}

function showStudy(job) {  // patient, study date and series of a DICOM input; a dash otherwise
  $("study").textContent = [job.patient_name, job.study_date, job.series_description]
    .map((text) => text || "\u2014").join(" \u00b7 ");
}

// ---------------------------------------------------------------- display
function resetView() {
  const [lo, hi] = S.meta.window, [mn, mx] = S.meta.image_range;
  const span = Math.max(mx - mn, 1e-6);
  for (const id of ["win-width", "win-level"]) { $(id).min = 0; $(id).step = span / 500; }
  $("win-width").min = span / 500; $("win-width").max = span * 2;
  $("win-level").min = mn - span / 2; $("win-level").max = mx + span / 2;
  S.width = Math.max(hi - lo, span / 500); S.level = (hi + lo) / 2;
  $("win-width").value = S.width; $("win-level").value = S.level;
  // the largest zoom that fits the free width beside the panel and the viewport's 80vh
  const freeW = Math.max(200, $("left").clientWidth - 4), freeH = Math.max(200, innerHeight * 0.8 - 4);
  S.zoom = Math.max(1, Math.min(MAX_ZOOM, Math.floor(Math.min(freeW / S.W, freeH / S.H))));
  $("zoom").value = S.zoom;
  render();
}

function boundary(mask, r, c, k = S.label) {  // a pixel of label k next to another label
  if (mask[idx(r, c)] !== k) return false;
  return (r === 0 || mask[idx(r - 1, c)] !== k) || (r === S.H - 1 || mask[idx(r + 1, c)] !== k) ||
         (c === 0 || mask[idx(r, c - 1)] !== k) || (c === S.W - 1 || mask[idx(r, c + 1)] !== k);
}

// a colour map from 5 evenly spaced stops, linear between them, t clamped to [0, 1]
const ramp = (stops) => (t) => {
  const x = Math.min(Math.max(t, 0), 1) * 4, i = Math.min(Math.floor(x), 3), f = x - i;
  return stops[i].map((v, k) => v + (stops[i + 1][k] - v) * f);
};
// uncertainty: seaborn's mako from its first quarter (deep blue -> teal -> mint), no yellow
const mako = ramp([[53, 38, 94], [52, 87, 154], [53, 140, 170], [80, 190, 172], [190, 235, 205]]);
// probability: the lower 60 % of matplotlib's plasma (dark blue -> violet -> rose), no yellow, so
// the yellow consensus contour stays visible over it
const plasma = ramp([[13, 8, 135], [84, 2, 163], [139, 10, 165], [185, 50, 137], [219, 92, 104]]);

function labelCount(i, k) {  // how many samples give voxel i label k
  const n = S.H * S.W * S.D;
  let count = 0;
  for (let s = 0; s < S.nSamples; s++) count += S.samples[s * n + i] === k;
  return count;
}

function probabilityAt(i) {  // share of samples: binary, the probability map; K > 1: with the label
  return S.labels.length > 1 ? labelCount(i, S.label) / S.nSamples : S.maps.probability[i] / 255;
}

function sampleMask(s) {  // a view of sample s as a mask indexed like the others
  const n = S.H * S.W * S.D;
  return S.samples.subarray(s * n, (s + 1) * n);
}

function render() {
  if (!S.image) return;
  const { H, W } = S;
  const off = document.createElement("canvas"); off.width = W; off.height = H;
  const ctx = off.getContext("2d"), img = ctx.createImageData(W, H), px = img.data;
  const lo = S.level - S.width / 2, showP = $("ov-probability").checked;
  const showU = $("ov-uncertainty").checked, unc = S.maps[$("unc-kind").value];
  const uScale = UNC_SCALE[$("unc-kind").value];
  const showAgree = $("ov-agree").checked, k = +$("agree-k").value;
  const showCons = $("ov-consensus").checked, showSample = $("ov-sample").checked;
  const blend = (o, rgb, a) => { for (let j = 0; j < 3; j++) px[o + j] = px[o + j] * (1 - a) + rgb[j] * a; };
  const mode = S.shownMode >= 0 ? sampleMask(S.meta.modes.medoids[S.shownMode]) : null;
  const sample = showSample ? sampleMask(S.sample) : null;
  const multi = S.labels.length > 1, act = S.label;
  for (let r = 0; r < H; r++) {
    for (let c = 0; c < W; c++) {
      const i = idx(r, c), o = (r * W + c) * 4;
      const g = Math.min(255, Math.max(0, ((S.image[i] - lo) / S.width) * 255));
      px[o] = px[o + 1] = px[o + 2] = g; px[o + 3] = 255;
      const count = showAgree || (showP && multi) ? labelCount(i, act) : 0;
      // below FLOOR a map is not drawn: faint values everywhere would veil the whole image
      if (showP) {  // K > 1: the share of samples with the active label, not 1 - p(background)
        const p = multi ? count / S.nSamples : probabilityAt(i);
        if (p >= FLOOR) blend(o, plasma(p), 0.2 + 0.45 * p);
      }
      if (showU) { const u = Math.min(1, uScale * unc[i] / 255); if (u >= FLOOR) blend(o, mako(u), 0.2 + 0.5 * u); }
      if (showAgree && count >= k) blend(o, [0, 220, 90], 0.4);
      const w = S.working[i];
      if (w === act) blend(o, [255, 40, 40], 0.3);
      else if (w) blend(o, labelColor(w), 0.25);  // the other labels of your mask
      if (boundary(S.working, r, c)) blend(o, [255, 40, 40], 0.9);
      else if (multi && w && boundary(S.working, r, c, w)) blend(o, labelColor(w), 0.6);
      const cv = S.consensus[i];
      if (showCons && cv && boundary(S.consensus, r, c, cv)) blend(o, labelColor(cv), 1);
      if (sample && boundary(sample, r, c)) blend(o, [0, 230, 255], 1);
      if (mode && boundary(mode, r, c)) blend(o, MODE_COLORS[S.shownMode % 5], 1);
    }
  }
  ctx.putImageData(img, 0, 0);
  const view = $("view");
  view.width = W * S.zoom; view.height = H * S.zoom;
  const vctx = view.getContext("2d");
  vctx.imageSmoothingEnabled = false;
  vctx.drawImage(off, 0, 0, view.width, view.height);
  drawMarks(vctx);
  renderColorbars(showP, showU);
  updateLabels();
}

function drawMarks(vctx) {  // on top of everything, inset: the contours stay visible around them
  const z = S.zoom, d = Math.max(2, Math.round(z * 0.6)), off = (z - d) / 2;
  vctx.lineWidth = 1; vctx.strokeStyle = "#000";
  for (let r = 0; r < S.H; r++) {
    for (let c = 0; c < S.W; c++) {
      const i = idx(r, c);
      if (!S.inside[i] && !S.outside[i]) continue;
      vctx.fillStyle = S.inside[i] ? "#00ff00" : "#285aff";
      vctx.fillRect(c * z + off, r * z + off, d, d);
      if (d >= 6) vctx.strokeRect(c * z + off + 0.5, r * z + off + 0.5, d - 1, d - 1);
    }
  }
}

function renderColorbars(showP, showU) {
  const box = $("colorbars");
  box.innerHTML = "";
  const add = (title, fn, low, high, floor = FLOOR) => {
    const div = document.createElement("div"); div.className = "colorbar";
    const cv = document.createElement("canvas"); cv.width = 120; cv.height = 10;
    const c = cv.getContext("2d");
    for (let x = 0; x < 120; x++) { const [r, g, b] = fn(x / 119); c.fillStyle = `rgb(${r},${g},${b})`; c.fillRect(x, 0, 1, 10); }
    div.append(low, cv, high, " " + title + " (< " + floor + " not drawn)");
    box.appendChild(div);
  };
  if (showP) {
    const l = S.labels.find((x) => x.value === S.label);
    add(S.labels.length > 1 ? `share of samples with label ${S.label} ${l ? l.name : ""}`
      : "share of samples marking the pixel", plasma, "0", "1");
  }
  if (showU) {
    const kind = $("unc-kind").value;
    const text = { entropy: "entropy of the samples / log 2 (1 = 50:50)",
      mutual_information: "mutual information / log 2 (confident samples disagree)",
      variance: "variance of the samples" }[kind];
    add(text, mako, "0", kind === "variance" ? "0.25" : "1", FLOOR / UNC_SCALE[kind]);
  }
  const legend = document.createElement("div");
  const guided = S.source === "guided" ? " (guided) " : " ";
  legend.innerHTML = (S.labels.length > 1
    ? "consensus" + guided + S.labels.map((l) => `<span class="swatch" style="background:${rgb(labelColor(l.value))}"></span> ` +
        `${l.value} ${escapeHtml(l.name)} `).join("")
    : '<span class="swatch" style="background:#ffe600"></span> consensus' + guided) +
    '<span class="swatch" style="background:#ff2828"></span> your mask ' +
    '<span class="swatch" style="background:#00e6ff"></span> sample ' +
    '<span class="swatch" style="background:#00ff00"></span> inside ' +
    '<span class="swatch" style="background:#285aff"></span> outside';
  box.appendChild(legend);
}

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (ch) => "&#" + ch.charCodeAt(0) + ";");
}

function renderLabelSelector() {  // only for a K-class run (K > 2 label values)
  const sel = $("label"), multi = S.labels.length > 1;
  $("label-row").classList.toggle("hidden", !multi);
  if (!S.labels.some((l) => l.value === S.label)) S.label = S.labels[0].value;
  sel.innerHTML = "";
  for (const l of S.labels) {
    const opt = document.createElement("option");
    opt.value = l.value; opt.textContent = l.value + " " + l.name;
    sel.appendChild(opt);
  }
  sel.value = S.label;
}

function activeName() {
  const l = S.labels.find((x) => x.value === S.label);
  return l ? l.name : String(S.label);
}

function setLabel(k) {  // marks concern one label: changing it clears them (undo restores)
  if (k === S.label || !S.labels.some((l) => l.value === k)) return;
  if (S.inside && (S.inside.some((v) => v) || S.outside.some((v) => v))) {
    snapshot(); S.inside.fill(0); S.outside.fill(0);
  }
  S.label = k; $("label").value = k;
  render();
}

function cycleLabel(step) {
  if (S.labels.length < 2) return;
  const j = S.labels.findIndex((l) => l.value === S.label);
  setLabel(S.labels[(j + step + S.labels.length) % S.labels.length].value);
}

function updateLabels() {
  $("slice-label").textContent = S.D > 1 ? (S.z + 1) + " / " + S.D : "";
  $("sample-label").textContent = "sample " + (S.sample + 1) + " of " + S.nSamples +
    (S.source === "guided" ? " (guided)" : "");
  $("agree-label").textContent = "pixels where \u2265 " + $("agree-k").value + " of " +
    S.nSamples + " samples agree" + (S.labels.length > 1 ? " on " + activeName() : "");
  $("radius-label").textContent = $("radius").value + " px";
  if (S.working) {
    let edited = 0;
    for (let i = 0; i < S.working.length; i++) edited += S.working[i] !== S.consensus0[i];
    $("edit-summary").textContent = "Start: " + S.startFrom + "; " + edited +
      " voxel(s) differ from the proposal";
  }
}

function describeModes(m) {
  return m.k + " plausible contour" + (m.k === 1 ? "" : "s") + ": " +
    m.shares.map((v) => Math.round(v * 100) + " %").join(" / ");
}

function renderModes() {
  const m = S.meta.modes;
  $("modes-summary").textContent = describeModes(m);
  const ul = $("modes"); ul.innerHTML = "";
  m.shares.forEach((share, j) => {
    const li = document.createElement("li");
    const [r, g, b] = MODE_COLORS[j % 5];
    li.innerHTML = `<span class="swatch" style="background:rgb(${r},${g},${b})"></span>` +
      `<span>Mode ${j + 1}: ${Math.round(share * 100)} %</span>`;
    const show = document.createElement("button"); show.textContent = "show";
    show.onclick = () => { S.shownMode = S.shownMode === j ? -1 : j; render(); };
    const start = document.createElement("button"); start.textContent = "start from";
    start.onclick = () => startFromMode(j);
    li.append(show, start); ul.appendChild(li);
  });
}

// ---------------------------------------------------------------- editing
function snapshot() {
  S.undo.push({ working: S.working.slice(), inside: S.inside.slice(), outside: S.outside.slice(),
                startFrom: S.startFrom, label: S.label });
  if (S.undo.length > 30) S.undo.shift();
}

function startFrom(label, mask, undoable = true) {
  if (undoable) snapshot();
  if (!S.consensus0) S.consensus0 = S.consensus.slice();  // the proposal stays the original
  S.working = Uint8Array.from(mask);
  S.startFrom = label;
  render();
}

function startFromMode(j) {
  if (j >= S.meta.modes.k) return;
  startFrom((S.source === "guided" ? "guided mode " : "mode ") + (j + 1),
            sampleMask(S.meta.modes.medoids[j]));
}

function undo() {
  const last = S.undo.pop();
  if (!last) return;
  Object.assign(S, last);
  $("label").value = S.label;
  render();
}

function tool() { return document.querySelector('input[name="tool"]:checked').value; }

function pixelAt(ev) {
  const rect = $("view").getBoundingClientRect();
  return [Math.floor((ev.clientY - rect.top) / rect.height * S.H),
          Math.floor((ev.clientX - rect.left) / rect.width * S.W)];
}

function paint(r0, c0) {
  const rad = +$("radius").value, t = tool();
  let changed = 0;
  for (let r = r0 - rad; r <= r0 + rad; r++) {
    for (let c = c0 - rad; c <= c0 + rad; c++) {
      if (r < 0 || c < 0 || r >= S.H || c >= S.W || (r - r0) ** 2 + (c - c0) ** 2 > rad * rad) continue;
      const i = idx(r, c);
      if (t === "brush") {  // paints the active label (over any other)
        if (S.working[i] !== S.label) { S.working[i] = S.label; changed++; }
      } else if (t === "eraser") {  // background where the active label is
        if (S.working[i] === S.label) { S.working[i] = 0; changed++; }
      } else {
        const [set, clear] = t === "inside" ? [S.inside, S.outside] : [S.outside, S.inside];
        if (!set[i]) { set[i] = 1; clear[i] = 0; changed++; }
      }
    }
  }
  return changed;
}

function onDown(ev) {
  if (ev.button === 2) { S.wl = { x: ev.clientX, y: ev.clientY, width: S.width, level: S.level }; return; }
  if (ev.button !== 0) return;
  snapshot();
  const [r, c] = pixelAt(ev);
  S.stroke = { tool: tool(), voxels: 0, last: [r, c] };
  S.stroke.voxels += paint(r, c);
  render();
}

function onMove(ev) {
  const [r, c] = pixelAt(ev);
  if (r >= 0 && c >= 0 && r < S.H && c < S.W && S.image) {
    const i = idx(r, c);
    $("cursor").textContent = `(${r}, ${c}${S.D > 1 ? ", " + S.z : ""}) value ${S.image[i].toFixed(1)}` +
      ` p${S.labels.length > 1 ? "(label " + S.label + ")" : ""}=${probabilityAt(i).toFixed(2)}` +
      (S.labels.length > 1 && S.working ? ` label ${S.working[i]}` : "");
  }
  if (S.wl) {
    const span = S.meta.image_range[1] - S.meta.image_range[0];
    S.width = Math.max(span / 500, S.wl.width + (ev.clientX - S.wl.x) * span / 300);
    S.level = S.wl.level - (ev.clientY - S.wl.y) * span / 300;
    $("win-width").value = S.width; $("win-level").value = S.level;
    render();
    return;
  }
  if (!S.stroke) return;
  // paint along the segment from the previous event: fast strokes leave no gaps
  const [r0, c0] = S.stroke.last, n = Math.max(Math.abs(r - r0), Math.abs(c - c0), 1);
  for (let j = 1; j <= n; j++) {
    S.stroke.voxels += paint(Math.round(r0 + (r - r0) * j / n), Math.round(c0 + (c - c0) * j / n));
  }
  S.stroke.last = [r, c];
  render();
}

async function onUp() {
  if (S.wl) { S.wl = null; return; }
  if (!S.stroke) return;
  const stroke = S.stroke; S.stroke = null;
  if (!stroke.voxels) { S.undo.pop(); return; }
  try {
    await postJSON(api + "/edit", { tool: stroke.tool, slice: S.D > 1 ? S.z : null, voxels: stroke.voxels,
                                    label: S.label });
    S.edits = (S.edits || 0) + 1;
    document.body.dataset.edits = S.edits;
  } catch (err) { setStatus("Edit not logged: " + err.message); }
}

// ---------------------------------------------------------------- actions
async function resample() {
  if (!S.inside.some((v) => v) && !S.outside.some((v) => v)) {
    $("resample-status").textContent = "Mark pixels inside (I) or outside (O) first"; return;
  }
  $("resample-status").textContent = "Sampling\u2026";
  try {
    await postJSON(api + "/resample", { inside: toBase64(S.inside), outside: toBase64(S.outside),
                                        n_samples: Math.max(S.nSamples, 8), label: S.label });
    S.source = "guided";
    await loadSamples();
    $("original").disabled = false;
    S.shownMode = -1;
    $("resample-status").textContent = "guided: " + describeModes(S.meta.modes);
    render();
  } catch (err) { $("resample-status").textContent = "Failed: " + err.message; }
}

async function showOriginal() {
  S.source = "output"; S.shownMode = -1; await loadSamples(); $("original").disabled = true;
  $("resample-status").textContent = ""; render();
}

function showDecision(d) {
  let text = `${d.decision} by ${d.user}`;
  if (d.decision === "approved") {
    text += ` \u2014 Dice with the proposal ${d.dice.toFixed(3)}, ${d.edited_voxels} voxel(s) edited`;
    if (d.seconds_open != null) text += `, ${d.seconds_open.toFixed(1)} s`;
    if (d.pacs) {
      text += d.pacs.stored ? " \u2014 stored in the PACS"
        : ` \u2014 NOT stored in the PACS: ${d.pacs.error}`;
    }
  }
  $("decision").textContent = text + (d.comment ? ` \u2014 \u201c${d.comment}\u201d` : "");
  document.body.dataset.state = d.decision;
}

async function decide(kind) {
  const body = { comment: $("comment").value };
  if (kind === "approve") { body.mask = toBase64(S.working); body.start_from = S.startFrom; }
  try {
    showDecision(await postJSON(api + "/" + kind, body));
  } catch (err) { $("decision").textContent = "Failed: " + err.message; }
}

async function explain(kind) {
  const img = $("img-" + kind);
  img.alt = "computing\u2026"; img.dataset.state = "loading";
  const res = await fetch(api + "/explain/" + kind + ".png", { headers: authHeaders });
  if (!res.ok) {
    let detail = res.statusText;
    try { detail = (await res.json()).detail; } catch (e) { /* not JSON */ }
    img.alt = "not available: " + detail; img.removeAttribute("src");
    img.dataset.state = "failed"; return;
  }
  img.onload = () => { img.dataset.state = "done"; };
  img.src = URL.createObjectURL(await res.blob());
}

// ---------------------------------------------------------------- wiring
function setSlice(z) { S.z = Math.max(0, Math.min(S.D - 1, z)); $("slice").value = S.z; render(); }
function setZoom(z) { S.zoom = Math.max(1, Math.min(MAX_ZOOM, z)); $("zoom").value = S.zoom; render(); }
function toggle(id) { $(id).checked = !$(id).checked; render(); }
function nextSample(step) { S.sample = (S.sample + step + S.nSamples) % S.nSamples; $("ov-sample").checked = true; render(); }
function setTool(name) { document.querySelector(`input[name="tool"][value="${name}"]`).checked = true; }

function onKey(ev) {
  if (ev.target.tagName === "TEXTAREA" || (ev.target.tagName === "INPUT" && ev.target.type === "text")) return;
  const key = ev.key;
  if ((ev.ctrlKey || ev.metaKey) && key.toLowerCase() === "z") { undo(); ev.preventDefault(); return; }
  if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
  const actions = {
    ArrowUp: () => setSlice(S.z + 1), ArrowDown: () => setSlice(S.z - 1),
    "+": () => setZoom(S.zoom + 1), "=": () => setZoom(S.zoom + 1), "-": () => setZoom(S.zoom - 1),
    r: resetView, c: () => toggle("ov-consensus"), p: () => toggle("ov-probability"),
    u: () => toggle("ov-uncertainty"),
    m: () => { const sel = $("unc-kind"); sel.value = UNC_KINDS[(UNC_KINDS.indexOf(sel.value) + 1) % 3]; $("ov-uncertainty").checked = true; render(); },
    s: () => toggle("ov-sample"), ",": () => nextSample(-1), ".": () => nextSample(1),
    g: () => toggle("ov-agree"),
    "[": () => { $("agree-k").value = +$("agree-k").value - 1; $("ov-agree").checked = true; render(); },
    "]": () => { $("agree-k").value = +$("agree-k").value + 1; $("ov-agree").checked = true; render(); },
    b: () => setTool("brush"), e: () => setTool("eraser"), i: () => setTool("inside"),
    o: () => setTool("outside"), z: undo, l: () => cycleLabel(1), L: () => cycleLabel(-1),
    q: () => { $("radius").value = +$("radius").value - 1; updateLabels(); },
    w: () => { $("radius").value = +$("radius").value + 1; updateLabels(); },
    "0": () => startFrom("consensus", S.consensus0 || S.consensus),
    R: resample, A: () => decide("approve"), X: () => decide("reject"),
    "?": () => showTab("help-tab"),
  };
  let action = actions[key];
  if (!action && /^[1-9]$/.test(key)) action = () => startFromMode(+key - 1);
  if (action && S.image) { action(); ev.preventDefault(); }
}

function showTab(id) {
  $("panel").classList.toggle("wide", id === "explain-tab");
  document.querySelectorAll(".tabpane").forEach((p) => p.classList.toggle("hidden", p.id !== id));
  document.querySelectorAll(".tab").forEach((b) => b.classList.toggle("active", b.dataset.tab === id));
}

function wire() {
  const view = $("view");
  view.addEventListener("mousedown", onDown);
  window.addEventListener("mousemove", onMove);
  window.addEventListener("mouseup", onUp);
  view.addEventListener("contextmenu", (e) => e.preventDefault());
  view.addEventListener("wheel", (e) => {
    e.preventDefault();
    if (e.ctrlKey) setZoom(S.zoom + (e.deltaY < 0 ? 1 : -1));
    else setSlice(S.z + (e.deltaY < 0 ? 1 : -1));
  }, { passive: false });
  document.addEventListener("keydown", onKey);
  $("slice").oninput = (e) => setSlice(+e.target.value);
  $("zoom").oninput = (e) => setZoom(+e.target.value);
  $("win-width").oninput = (e) => { S.width = +e.target.value; render(); };
  $("win-level").oninput = (e) => { S.level = +e.target.value; render(); };
  for (const id of ["ov-consensus", "ov-probability", "ov-uncertainty", "unc-kind", "ov-sample", "ov-agree", "agree-k"]) {
    $(id).addEventListener("input", render);
  }
  $("radius").oninput = updateLabels;
  $("label").onchange = (e) => setLabel(+e.target.value);
  $("reset-view").onclick = resetView;
  $("prev-sample").onclick = () => nextSample(-1);
  $("next-sample").onclick = () => nextSample(1);
  $("from-consensus").onclick = () => startFrom("consensus", S.consensus0 || S.consensus);
  $("undo").onclick = undo;
  $("clear-marks").onclick = () => { snapshot(); S.inside.fill(0); S.outside.fill(0); render(); };
  $("resample").onclick = resample;
  $("original").onclick = showOriginal;
  $("approve").onclick = () => decide("approve");
  $("reject").onclick = () => decide("reject");
  document.querySelectorAll(".tab").forEach((b) => { b.onclick = () => showTab(b.dataset.tab); });
  document.querySelectorAll(".explain button").forEach((b) => { b.onclick = () => explain(b.dataset.kind); });
}

wire();
init();
