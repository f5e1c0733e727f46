// The icseg viewer: build a visual prompt (example pairs or a stored prompt), send a query to POST /segment,
// draw the returned mask over the query. Plain browser JavaScript, no build step, same-origin API calls.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);

  // per-label colours: Okabe-Ito (colour-blind safe) for labels 1-7, then hues spaced by the golden angle
  const PALETTE = [null, [230, 159, 0], [86, 180, 233], [0, 158, 115], [240, 228, 66], [0, 114, 178],
    [213, 94, 0], [204, 121, 167]];
  const MASK_EXTENSIONS = { "image/png": ".png", "image/tiff": ".tif", "application/gzip": ".nii.gz",
    "application/dicom": ".dcm", "application/x-nrrd": ".seg.nrrd" };
  const KEY_STORAGE = "icseg.apiKey";

  const state = {
    pairs: [],        // [{image: File | null, mask: File | null}], paired by order
    query: null,      // File
    labelNames: {},   // label -> name for the example's labels
    result: null,     // {width, height, labels: Uint8Array, values: [int], names: {}}
    heat: null,       // {width, height, labels: Uint8Array}: the uncertainty maps, largest over the labels, 255 = 1
    downloadUrl: null,
    thumbnailUrls: [],
  };

  function labelColour(label) {
    if (label < PALETTE.length) return PALETTE[label];
    const h = ((label * 137.508) % 360) / 60;
    const x = 1 - Math.abs((h % 2) - 1);
    const [r, g, b] = [[1, x, 0], [x, 1, 0], [0, 1, x], [0, x, 1], [x, 0, 1], [1, 0, x]][Math.floor(h) % 6];
    return [r, g, b].map((v) => Math.round(60 + 180 * v));
  }

  // -- messages --------------------------------------------------------------------------------------

  function say(text, kind = "") {
    const el = $("message");
    el.textContent = text;
    el.className = `message ${kind}`;
  }

  class ApiError extends Error {
    constructor(message, status = 0, code = "") {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function errorFrom(response) {
    const text = await response.text();
    let error = null;
    try {
      error = JSON.parse(text).error;
    } catch {
      // a proxy's own page (502, 504 ...) or plain text
    }
    if (error && error.message) {
      let message = error.message + (error.field ? ` (field: ${error.field})` : "");
      if (response.status === 401) message += ". Enter the key in the API key box at the top.";
      return new ApiError(message, response.status, error.code);
    }
    const hints = {
      413: "the upload is larger than the server accepts",
      502: "no replica of the service answered",
      504: "the service took too long to answer",
    };
    return new ApiError(`the server answered ${response.status}${hints[response.status] ? `: ${hints[response.status]}` : ""}`,
      response.status);
  }

  async function api(path, options = {}) {
    const headers = new Headers(options.headers || {});
    const key = $("api-key").value.trim();
    if (key) headers.set("Authorization", `Bearer ${key}`);
    let response;
    try {
      response = await fetch(path, { ...options, headers });
    } catch (err) {
      throw new ApiError(`the server did not answer (${err.message}); is it running?`);
    }
    if (!response.ok) throw await errorFrom(response);
    return response;
  }

  // -- server status and stored prompts ---------------------------------------------------------------

  async function refreshStatus() {
    const el = $("server-status");
    try {
      await api("readyz");
    } catch (err) {
      el.textContent = `not ready: ${err.message}`;
      el.className = "status unready";
      return;
    }
    el.className = "status ready";
    try {
      const info = await (await api("info")).json();
      el.textContent = `ready · ${info.model} on ${info.device} · up to ${info.max_support} examples`;
    } catch (err) {
      el.textContent = err.status === 401 ? "ready · enter the API key to use it" : "ready";
    }
  }

  async function refreshPrompts(selectId = null) {
    const select = $("prompt-select");
    let prompts = [];
    try {
      prompts = (await (await api("prompts")).json()).prompts;
    } catch (err) {
      say(`Could not list stored prompts: ${err.message}`, "error");
    }
    const previous = selectId || select.value;
    select.replaceChildren();
    if (!prompts.length) select.append(new Option("no stored prompts", ""));
    for (const p of prompts) {
      const name = p.name || "unnamed";
      const option = new Option(`${name} · ${p.support_size} examples · ${p.id.slice(0, 8)}`, p.id);
      option.dataset.info = JSON.stringify(p);
      select.append(option);
    }
    if (prompts.some((p) => p.id === previous)) select.value = previous;
    showPromptInfo();
  }

  function showPromptInfo() {
    const option = $("prompt-select").selectedOptions[0];
    if (!option || !option.dataset.info) {
      $("prompt-info").textContent = "Store example pairs as a prompt to reuse them without uploading again.";
      return;
    }
    const p = JSON.parse(option.dataset.info);
    const labels = p.labels.map((l) => (p.label_names[l] ? `${l} (${p.label_names[l]})` : `${l}`)).join(", ");
    const expires = p.expires_at ? `, expires ${new Date(p.expires_at * 1000).toLocaleString()}` : "";
    $("prompt-info").textContent = `labels ${labels}; ${p.support_size} examples${expires}. id ${p.id}`;
  }

  function source() {
    return document.querySelector('input[name="source"]:checked').value;
  }

  function setSource(value) {
    document.querySelector(`input[name="source"][value="${value}"]`).checked = true;
    $("pairs-source").hidden = value !== "pairs";
    $("prompt-source").hidden = value !== "prompt";
    if (value === "prompt") refreshPrompts();
  }

  // -- example pairs ----------------------------------------------------------------------------------

  const byName = (a, b) => a.name.localeCompare(b.name, undefined, { numeric: true });

  function addFiles(files, slot) {
    for (const file of [...files].sort(byName)) {
      const open = state.pairs.find((p) => p[slot] === null);
      if (open) open[slot] = file;
      else state.pairs.push({ image: null, mask: null, [slot]: file });
    }
    state.labelNames = {};
    renderPairs();
  }

  async function decodeLabels(blob) {
    // raw sample values: no colour management, no premultiplication (a mask PNG holds labels, not colours)
    const bitmap = await createImageBitmap(blob, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
    const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
    const ctx = canvas.getContext("2d", { willReadFrequently: true });
    ctx.drawImage(bitmap, 0, 0);
    const rgba = ctx.getImageData(0, 0, bitmap.width, bitmap.height).data;
    const labels = new Uint8Array(bitmap.width * bitmap.height);
    for (let i = 0; i < labels.length; i++) labels[i] = rgba[4 * i];
    return { width: bitmap.width, height: bitmap.height, labels };
  }

  function paintPixels(canvas, width, height, fill) {
    // size the canvas to the map and let fill(d) write its RGBA bytes
    canvas.width = width;
    canvas.height = height;
    const ctx = canvas.getContext("2d");
    const out = ctx.createImageData(width, height);
    fill(out.data);
    ctx.putImageData(out, 0, 0);
  }

  function paintLabels(canvas, { width, height, labels }, alpha = 255, outline = false) {
    paintPixels(canvas, width, height, (d) => {
      for (let i = 0; i < labels.length; i++) {
        const label = labels[i];
        if (!label) continue;
        if (outline) {
          const x = i % width;
          const inside = x > 0 && x < width - 1 && i >= width && i < labels.length - width &&
            labels[i - 1] === label && labels[i + 1] === label && labels[i - width] === label && labels[i + width] === label;
          if (inside) continue;
        }
        const [r, g, b] = labelColour(label);
        d[4 * i] = r;
        d[4 * i + 1] = g;
        d[4 * i + 2] = b;
        d[4 * i + 3] = alpha;
      }
    });
  }

  function renderPairs() {
    const list = $("pairs");
    list.replaceChildren();
    state.thumbnailUrls.forEach((url) => URL.revokeObjectURL(url));
    state.thumbnailUrls = [];
    state.pairs.forEach((pair, index) => {
      const item = document.createElement("li");
      if (!pair.image || !pair.mask) item.className = "unpaired";
      const thumb = document.createElement("img");
      thumb.alt = "";
      if (pair.image) {
        thumb.src = URL.createObjectURL(pair.image);
        state.thumbnailUrls.push(thumb.src);
      }
      const maskThumb = document.createElement("canvas");
      maskThumb.width = maskThumb.height = 1;
      if (pair.mask) decodeLabels(pair.mask).then((m) => paintLabels(maskThumb, m)).catch(() => {});
      const names = document.createElement("span");
      names.className = "names";
      names.textContent = `${index + 1}. ${pair.image ? pair.image.name : "(no image)"} + ${pair.mask ? pair.mask.name : "(no mask)"}`;
      names.title = names.textContent;  // long file names are cut with an ellipsis; the full one on hover
      const remove = document.createElement("button");
      remove.type = "button";
      remove.textContent = "×";
      remove.title = "remove this pair";
      remove.addEventListener("click", () => {
        state.pairs.splice(index, 1);
        renderPairs();
      });
      item.append(thumb, maskThumb, names, remove);
      list.append(item);
    });
  }

  function labelNames() {
    // "1: liver, 2: spleen" typed by the user, over the example's names
    const typed = {};
    for (const part of $("label-names").value.split(",")) {
      const match = part.match(/^\s*(\d+)\s*[:=]\s*(.+?)\s*$/);
      if (match) typed[String(Number(match[1]))] = match[2];
    }
    return { ...state.labelNames, ...typed };
  }

  function completePairs() {
    const broken = state.pairs.findIndex((p) => !p.image || !p.mask);
    if (broken >= 0) {
      const missing = state.pairs[broken].image ? "a mask" : "an image";
      throw new ApiError(`Pair ${broken + 1} has no ${missing.split(" ")[1]}: add ${missing} or remove the pair.`);
    }
    if (!state.pairs.length) {
      throw new ApiError("Add example pairs (images and their masks) first, pick a stored prompt, or press Try the example.");
    }
    return state.pairs;
  }

  async function storePrompt() {
    try {
      const form = new FormData();
      for (const pair of completePairs()) {
        form.append("support_images", pair.image, pair.image.name);
        form.append("support_masks", pair.mask, pair.mask.name);
      }
      const name = $("prompt-name").value.trim();
      if (name) form.append("name", name);
      if (Object.keys(labelNames()).length) form.append("label_names", JSON.stringify(labelNames()));
      say("Storing the prompt…", "busy");
      const prompt = await (await api("prompts", { method: "POST", body: form })).json();
      setSource("prompt");
      await refreshPrompts(prompt.id);
      say(`Stored prompt ${prompt.name || prompt.id} (${prompt.support_size} examples).`);
    } catch (err) {
      say(err.message, "error");
    }
  }

  // -- query, segmentation, overlay --------------------------------------------------------------------

  function setQuery(file) {
    state.query = file;
    clearResult();
    if (file) showQuery(file).catch(() => {});
  }

  async function serverPreview(file) {
    // DICOM, NRRD, NIfTI, a zipped series, 16-bit TIFF: the browser cannot draw them; the server decodes
    // them with the same readers as /segment and answers an 8-bit PNG (a volume: its middle slice)
    const form = new FormData();
    form.append("query", file, file.name);
    const response = await api("preview", { method: "POST", body: form });
    return createImageBitmap(await response.blob());
  }

  async function showQuery(file) {
    const canvas = $("image-canvas");
    let bitmap;
    try {
      bitmap = await createImageBitmap(file);
    } catch {
      try {
        bitmap = await serverPreview(file);
      } catch {
        $("stage").dataset.state = "empty";
        return false;
      }
    }
    canvas.width = bitmap.width;
    canvas.height = bitmap.height;
    canvas.getContext("2d").drawImage(bitmap, 0, 0);
    $("stage").dataset.state = "query";
    return true;
  }

  function clearResult() {
    state.result = null;
    const overlay = $("overlay-canvas");
    overlay.getContext("2d").clearRect(0, 0, overlay.width, overlay.height);
    $("legend").replaceChildren();
    $("confidence").replaceChildren();
    $("warnings").replaceChildren();
    state.heat = null;
    $("timings").textContent = "";
    const link = $("download");
    link.removeAttribute("href");
    link.setAttribute("aria-disabled", "true");
    if (state.downloadUrl) URL.revokeObjectURL(state.downloadUrl);
    state.downloadUrl = null;
  }

  function renderOverlay() {
    if (!state.result) return;
    const alpha = Math.round((255 * Number($("opacity").value)) / 100);
    const outline = document.querySelector('input[name="mode"]:checked').value === "outline";
    if ($("heat").checked && state.heat) {
      paintHeat($("overlay-canvas"), state.heat, alpha);
      $("stage").dataset.overlay = "uncertainty";
      return;
    }
    $("stage").dataset.overlay = "mask";
    paintLabels($("overlay-canvas"), state.result, alpha, outline);
  }

  async function decodeHeat(files) {
    // the per-label uncertainty PNGs (255 = most uncertain) -> one map, the largest over the labels
    if (!files || !files.length) return null;
    let heat = null;
    for (const file of files) {
      const map = await decodeLabels(new Blob([base64Bytes(file)], { type: "image/png" }));
      if (!heat) heat = map;
      else for (let i = 0; i < heat.labels.length; i++) heat.labels[i] = Math.max(heat.labels[i], map.labels[i]);
    }
    return heat;
  }

  function paintHeat(canvas, { width, height, labels }, alpha) {
    // transparent where certain, through yellow to red where most uncertain
    paintPixels(canvas, width, height, (d) => {
      for (let i = 0; i < labels.length; i++) {
        const u = labels[i] / 255;
        d[4 * i] = 255;
        d[4 * i + 1] = Math.round(255 * (1 - u));
        d[4 * i + 2] = 0;
        d[4 * i + 3] = Math.round(alpha * Math.min(1, 1.5 * u));
      }
    });
  }

  function renderQuality(body, names) {
    // confidence per label and the warnings, as the API words them
    const line = $("confidence");
    line.replaceChildren();
    const entries = Object.entries(body.confidence || {});
    if (entries.length) {
      line.append("Confidence: ");
      entries.forEach(([label, value], i) => {
        const low = (body.low_confidence_labels || []).includes(Number(label));
        const name = names[label] && names[label] !== `label ${label}` ? ` · ${names[label]}` : "";
        const part = Object.assign(document.createElement("span"), {
          textContent: `${label}${name} ${Number(value).toFixed(2)}${low ? " (low)" : ""}`,
        });
        if (low) part.className = "low";
        line.append(...(i ? [", ", part] : [part]));
      });
      if (body.calibrated === false) line.append(" (thresholds not calibrated for these weights)");
    }
    const list = $("warnings");
    list.replaceChildren();
    for (const warning of body.warnings || []) list.append(Object.assign(document.createElement("li"), { textContent: warning }));
  }

  function renderLegend({ values, names }) {
    // the labels the mask holds, not every label of the support set
    const legend = $("legend");
    legend.replaceChildren();
    for (const value of values) {
      const item = document.createElement("li");
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.backgroundColor = `rgb(${labelColour(value).join(",")})`;
      const name = names[value] && names[value] !== `label ${value}` ? names[value] : "";
      item.append(swatch, `${value}${name ? ` · ${name}` : ""}`);
      legend.append(item);
    }
    if (!values.length) legend.append(Object.assign(document.createElement("li"), { textContent: "no label found" }));
  }

  function base64Bytes(text) {
    const raw = atob(text);
    const bytes = new Uint8Array(raw.length);
    for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
    return bytes;
  }

  async function segment() {
    const button = $("segment");
    try {
      if (!state.query) throw new ApiError("Choose a query image first (step 2), or press Try the example.");
      const form = new FormData();
      form.append("query", state.query, state.query.name);
      if (source() === "prompt") {
        const id = $("prompt-select").value;
        if (!id) throw new ApiError("No stored prompt is selected: store example pairs as a prompt first.");
        form.append("prompt_id", id);
      } else {
        for (const pair of completePairs()) {
          form.append("support_images", pair.image, pair.image.name);
          form.append("support_masks", pair.mask, pair.mask.name);
        }
        if (Object.keys(labelNames()).length) form.append("label_names", JSON.stringify(labelNames()));
      }
      form.append("threshold", $("threshold").value);
      form.append("ensemble", $("ensemble").value);
      if ($("select").value) form.append("select", $("select").value);
      if ($("support-size").value) form.append("support_size", $("support-size").value);
      form.append("output", "json");
      form.append("uncertainty", "true");  // the heat map switch needs no second request
      button.disabled = true;
      say("Segmenting…", "busy");
      const started = performance.now();
      const body = await (await api("segment", { method: "POST", body: form })).json();
      const roundTrip = performance.now() - started;
      await showResult(body, roundTrip);
    } catch (err) {
      say(err.message, "error");
    } finally {
      button.disabled = false;
    }
  }

  async function showResult(body, roundTrip) {
    clearResult();
    const maskBlob = new Blob([base64Bytes(body.mask)], { type: body.media_type });
    state.downloadUrl = URL.createObjectURL(maskBlob);
    const link = $("download");
    link.href = state.downloadUrl;
    link.download = `mask${MASK_EXTENSIONS[body.media_type] || ""}`;
    link.setAttribute("aria-disabled", "false");
    const names = { ...labelNames(), ...(body.label_names || {}) };
    renderLegend({ values: body.labels_present || body.labels, names });
    renderQuality(body, names);
    const t = body.timings || {};
    const sel = body.selection;
    $("timings").textContent = `server: decode ${t.decode} ms · model ${t.model} ms · encode ${t.encode} ms; ` +
      `round trip ${Math.round(roundTrip)} ms` +
      (sel ? `; examples: ${sel.support_size} of ${sel.pool} (${sel.select})` : "");

    const shown = await showQuery(state.query);
    if (body.media_type !== "image/png" || Math.max(0, ...body.labels) > 255) {
      say("Done. This mask cannot be drawn in the browser (not an 8-bit PNG); download it instead.");
      return;
    }
    const mask = await decodeLabels(maskBlob);
    if (!shown) {
      // a TIFF or DICOM query: the browser cannot draw it; show the mask on black
      const canvas = $("image-canvas");
      canvas.width = mask.width;
      canvas.height = mask.height;
      canvas.getContext("2d").fillRect(0, 0, mask.width, mask.height);
      $("stage").dataset.state = "query";
    }
    state.result = { ...mask, values: body.labels, names };
    state.heat = await decodeHeat(body.uncertainty);
    $("stage").dataset.state = "result";
    renderOverlay();
    const found = mask.labels.reduce((n, v) => n + (v ? 1 : 0), 0);
    const share = ((100 * found) / mask.labels.length).toFixed(1);
    say(shown ? `Done: ${share} % of the query is labelled.` :
      `Done: ${share} % labelled. The browser cannot draw this query format, so the mask is shown on black.`);
  }

  async function tryExample() {
    try {
      say("Loading the example…", "busy");
      const fetchFile = async (name) => {
        const response = await fetch(`static/example/${name}`);
        if (!response.ok) throw new ApiError(`the example file ${name} is missing (${response.status})`);
        return new File([await response.blob()], name, { type: "image/png" });
      };
      const manifest = await (await fetch("static/example/manifest.json")).json();
      state.pairs = await Promise.all(manifest.support.map(async (p) => ({
        image: await fetchFile(p.image), mask: await fetchFile(p.mask),
      })));
      const query = await fetchFile(manifest.query);
      setSource("pairs");
      renderPairs();
      const transfer = new DataTransfer();
      transfer.items.add(query);
      $("query").files = transfer.files;
      setQuery(query);
      state.labelNames = manifest.label_names || {};
      await segment();
    } catch (err) {
      say(err.message, "error");
    }
  }

  // -- wiring --------------------------------------------------------------------------------------

  function init() {
    const key = $("api-key");
    key.value = sessionStorage.getItem(KEY_STORAGE) || "";
    key.addEventListener("change", () => {
      sessionStorage.setItem(KEY_STORAGE, key.value.trim());
      refreshStatus();
      if (source() === "prompt") refreshPrompts();
    });
    for (const radio of document.querySelectorAll('input[name="source"]')) {
      radio.addEventListener("change", () => setSource(radio.value));
    }
    $("support-images").addEventListener("change", (e) => { addFiles(e.target.files, "image"); e.target.value = ""; });
    $("support-masks").addEventListener("change", (e) => { addFiles(e.target.files, "mask"); e.target.value = ""; });
    $("clear-pairs").addEventListener("click", () => { state.pairs = []; renderPairs(); });
    $("save-prompt").addEventListener("click", storePrompt);
    $("prompt-select").addEventListener("change", showPromptInfo);
    $("refresh-prompts").addEventListener("click", () => refreshPrompts());
    $("query").addEventListener("change", (e) => setQuery(e.target.files[0] || null));
    $("segment").addEventListener("click", segment);
    $("try-example").addEventListener("click", tryExample);
    $("opacity").addEventListener("input", renderOverlay);
    $("heat").addEventListener("change", renderOverlay);
    for (const radio of document.querySelectorAll('input[name="mode"]')) radio.addEventListener("change", renderOverlay);
    refreshStatus();
  }

  init();
})();
