// lookalike's web page: plain ES module, no build step, talks to the JSON API.
const $ = (id) => document.getElementById(id);
const results = $("results"), status = $("status"), errorBox = $("error");
let lastProducts = new Map();
let photo = null; // the dropped photo, kept for searches that change only the words
let found = []; // the products found in the photo ("regions"), each with its results
let part = null; // what the shown results searched: { box: [x0, y0, x1, y1] } or { whole: true }

function showError(message) {
  errorBox.textContent = message;
  errorBox.hidden = !message;
}

async function api(path, options) {
  const response = await fetch(path, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error?.message || `request failed (${response.status})`);
  return body;
}

function filterParams() {
  const params = new URLSearchParams();
  const category = $("category").value, min = $("min-price").value, max = $("max-price").value;
  if (category) params.set("category", category);
  if (min) params.set("min_price", min);
  if (max) params.set("max_price", max);
  return params;
}

function price(value) {
  return value == null ? "" : `$${Number(value).toFixed(2)}`;
}

// scoreLabel: how to show a result's score ("similar", "match"), or null for none; explainable:
// results of the dropped photo, which can say why they matched.
function render(items, scoreLabel, explainable = false) {
  lastProducts = new Map(items.map((p) => [p.id, p]));
  results.replaceChildren(...items.map((p) => {
    const card = document.createElement("article");
    card.className = "card";
    card.dataset.id = p.id;
    card.dataset.category = p.category ?? "";
    const img = document.createElement("img");
    // The view that matched the query (a back view, another colour), else the main photo.
    img.src = p.matched_image ?? p.image; img.alt = p.title ?? p.id; img.loading = "lazy";
    if ((p.images?.length ?? 1) > 1) card.dataset.views = String(p.images.length);
    img.addEventListener("click", () => openDetails(p.id));
    const body = document.createElement("div");
    body.className = "body";
    const title = document.createElement("div");
    title.className = "title"; title.textContent = p.title ?? p.id;
    const meta = document.createElement("div");
    meta.className = "meta"; meta.textContent = p.category ?? "";
    const row = document.createElement("div");
    row.className = "row";
    const priceEl = document.createElement("span");
    priceEl.className = "price"; priceEl.textContent = price(p.price);
    row.append(priceEl);
    if (scoreLabel) {
      const score = document.createElement("span");
      score.className = "score"; score.textContent = `${Math.round(p.score * 100)}% ${scoreLabel}`;
      row.append(score);
    }
    const more = document.createElement("button");
    more.type = "button"; more.className = "more"; more.textContent = "More like this";
    more.addEventListener("click", () => moreLike(p.id));
    const actions = document.createElement("div");
    actions.className = "actions";
    actions.append(more);
    if (explainable) {
      const why = document.createElement("button");
      why.type = "button"; why.className = "why"; why.textContent = "Why?";
      why.setAttribute("aria-label", `Why ${p.title ?? p.id} matched`);
      why.addEventListener("click", () => explainMatch(p));
      actions.append(why);
    }
    body.append(title, meta, row, actions);
    card.append(img, body);
    return card;
  }));
}

function setPhoto(file) {
  photo = file;
  found = []; part = null;
  $("preview").hidden = !file;
  $("clear-photo").hidden = !file;
  $("stage").hidden = !file;
  $("regions").replaceChildren();
  $("boxes").replaceChildren();
  if (file) {
    const url = URL.createObjectURL(file);
    $("preview").src = url;
    $("stage-photo").src = url;
  } else $("file").value = "";
}

// The photo's own size (after EXIF orientation, as the server counts boxes).
function photoSize() {
  const img = $("stage-photo");
  return { width: img.naturalWidth || 1, height: img.naturalHeight || 1 };
}

// Outlines `box` ([x0, y0, x1, y1] in the photo's pixels) on the photo; returns the element.
function outline(box, className) {
  const { width, height } = photoSize();
  const el = document.createElement("div");
  el.className = `box ${className}`;
  Object.assign(el.style, {
    left: `${(100 * box[0]) / width}%`, top: `${(100 * box[1]) / height}%`,
    width: `${(100 * (box[2] - box[0])) / width}%`, height: `${(100 * (box[3] - box[1])) / height}%`,
  });
  $("boxes").append(el);
  return el;
}

function isWholePhoto(box) {
  const { width, height } = photoSize();
  return box[0] <= 0 && box[1] <= 0 && box[2] >= width && box[3] >= height;
}

// Shows the products found in the photo, a chip each, and the results of region `index`.
function showRegion(index, scoreLabel) {
  $("boxes").replaceChildren();
  found.forEach((region, i) => {
    if (found.length > 1 || !isWholePhoto(region.box)) outline(region.box, i === index ? "active" : "");
  });
  [...$("regions").children].forEach((chip, i) => chip.setAttribute("aria-pressed", String(i === index)));
  const box = found[index].box;
  part = isWholePhoto(box) ? { whole: true } : { box };
  render(found[index].results, scoreLabel, true);
}

// Searches with the photo, the words, or both (the server fuses the two rankings). A photo is
// searched for every product found in it, or only in `box` when one was dragged on it.
async function search(box = null) {
  showError("");
  const words = $("words").value.trim();
  if (!photo && !words) return browse();
  const form = new FormData();
  if (photo) form.set("image", photo);
  if (words) form.set("q", words);
  form.set("k", "24");
  for (const [key, value] of filterParams()) form.set(key, value);
  const hybrid = photo && $("hybrid").checked;
  if (hybrid) form.set("hybrid", "true");
  if (box) form.set("box", box.map(Math.round).join(","));
  else if (photo && !hybrid) form.set("regions", "true");
  status.textContent = "Searching…";
  const started = performance.now();
  try {
    const body = await api("/v1/search", { method: "POST", body: form });
    // Words alone score by text relevance, which has no percentage to show.
    const scoreLabel = photo ? (words ? "match" : "similar") : null;
    let shown = body.results;
    if (body.regions) {
      found = body.regions;
      $("regions").replaceChildren(...(found.length > 1 ? found : []).map((region, i) => {
        const chip = document.createElement("button");
        chip.type = "button";
        chip.textContent = region.results[0]?.title ?? `Product ${i + 1}`;
        chip.addEventListener("click", () => showRegion(i, scoreLabel));
        return chip;
      }));
      if (found.length) showRegion(0, scoreLabel);
      else render([], scoreLabel);
      shown = found[0]?.results ?? [];
    } else {
      found = [];
      $("regions").replaceChildren();
      $("boxes").replaceChildren();
      if (box) outline(box, "active");
      part = box ? { box } : body.searched_box ? { box: body.searched_box } : { whole: true };
      render(body.results, scoreLabel, Boolean(photo));
    }
    const guessed = body.predicted
      ? ` within ${body.predicted.map((p) => `${p.category} (${Math.round(p.probability * 100)}%)`).join(", ")}`
      : "";
    const what = photo ? "similar products" : `products matching “${words}”`;
    const where = found.length > 1 ? ` for each of ${found.length} products found in the photo` : box ? " for the part you marked" : "";
    const busy = body.searched_whole_when_busy ? " (the server was busy and searched the whole photo: mark the product, or try again)" : "";
    status.textContent = `${shown.length} ${what}${where}${guessed} in ${Math.round(performance.now() - started)} ms${busy}`;
  } catch (e) {
    results.replaceChildren();
    status.textContent = "";
    showError(e.message);
  }
}

async function searchPhoto(file) {
  setPhoto(file);
  // Boxes are drawn in the photo's own pixels: its size first (a file that is no photo fails
  // here and the server says why).
  await $("stage-photo").decode().catch(() => {});
  return search();
}

async function moreLike(id) {
  showError("");
  const params = filterParams();
  params.set("k", "24");
  try {
    const body = await api(`/v1/products/${encodeURIComponent(id)}/similar?${params}`);
    const source = lastProducts.get(id);
    render(body.results, "similar");
    status.textContent = `Products that look like ${source?.title ?? id}`;
    $("details").open && $("details").close();
    window.scrollTo({ top: 0, behavior: "smooth" });
  } catch (e) {
    showError(e.message);
  }
}

// "Why?": how the photo (the part the results searched) matches product `p`, both photos with
// their heat maps and the boxes that carried the match.
async function explainMatch(p) {
  showError("");
  const form = new FormData();
  form.set("image", photo);
  form.set("id", p.id);
  if (part?.box) form.set("box", part.box.map(Math.round).join(","));
  else form.set("whole", "true");
  try {
    const why = await api("/v1/explain", { method: "POST", body: form });
    await Promise.all([
      drawHeat($("why-query"), $("stage-photo").src, why.query_heatmap, why.query_box),
      drawHeat($("why-match"), why.matched_image, why.match_heatmap, why.match_box),
    ]);
    $("why-title").textContent = `Why ${p.title ?? p.id} matched`;
    $("why-match-caption").textContent = p.title ?? p.id;
    $("why-note").textContent = "The warmer the colour, the more that part of each photo made them alike; the boxes hold the parts that carried the match.";
    $("why").showModal();
  } catch (e) {
    showError(e.message);
  }
}

function loadImage(src) {
  return new Promise((done, fail) => {
    const img = new Image();
    img.onload = () => done(img);
    img.onerror = () => fail(new Error("a photo could not be shown"));
    img.src = src;
  });
}

// Draws the photo at `src` on `canvas` with `heat` over it (cells blended smoothly, red to
// yellow as they warm) and `box` outlined; boxes count in the photo's own pixels.
async function drawHeat(canvas, src, heat, box) {
  const img = await loadImage(src);
  const scale = Math.min(1, 480 / Math.max(img.naturalWidth, img.naturalHeight));
  const [w, h] = [Math.round(img.naturalWidth * scale), Math.round(img.naturalHeight * scale)];
  canvas.width = w; canvas.height = h;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(img, 0, 0, w, h);
  const cells = document.createElement("canvas");
  cells.width = heat.width; cells.height = heat.height;
  const hottest = Math.max(...heat.values) || 1;
  const pixels = cells.getContext("2d").createImageData(heat.width, heat.height);
  heat.values.forEach((value, i) => {
    const t = value / hottest;
    pixels.data.set([255, Math.round(220 * t), 0, Math.round(170 * t)], 4 * i);
  });
  cells.getContext("2d").putImageData(pixels, 0, 0);
  ctx.imageSmoothingEnabled = true;
  ctx.drawImage(cells, 0, 0, w, h);
  ctx.strokeStyle = "#0ea5e9"; ctx.lineWidth = 3;
  ctx.strokeRect(box[0] * scale, box[1] * scale, (box[2] - box[0]) * scale, (box[3] - box[1]) * scale);
}

async function browse() {
  showError("");
  const params = new URLSearchParams({ per_page: "48" });
  if ($("category").value) params.set("category", $("category").value);
  try {
    const body = await api(`/v1/products?${params}`);
    render(body.items, null);
    status.textContent = `${body.total} products`;
  } catch (e) {
    showError(e.message);
  }
}

function openDetails(id) {
  const p = lastProducts.get(id);
  if (!p) return;
  $("details-image").src = p.matched_image ?? p.image;
  const views = p.images ?? [p.image];
  $("details-views").hidden = views.length < 2;
  $("details-views").replaceChildren(...views.map((url) => {
    const thumb = document.createElement("img");
    thumb.src = url; thumb.alt = ""; thumb.loading = "lazy";
    thumb.addEventListener("click", () => { $("details-image").src = url; });
    return thumb;
  }));
  $("details-title").textContent = p.title ?? p.id;
  $("details-meta").textContent = [p.category, price(p.price), p.id].filter(Boolean).join(" · ");
  $("details-description").textContent = p.description ?? "";
  $("details-more").onclick = () => moreLike(p.id);
  // Only http(s) addresses and site paths are accepted into the catalogue.
  $("details-link").hidden = !p.url;
  if (p.url) $("details-link").href = p.url;
  $("details").showModal();
}

async function loadCategories() {
  try {
    const body = await api("/v1/products?per_page=1");
    for (const c of body.categories) $("category").append(new Option(c, c));
    const stats = await api("/v1/stats");
    $("hybrid-option").hidden = !stats.classifier;
  } catch (e) {
    showError(e.message);
  }
}

const drop = $("drop");
$("file").addEventListener("change", (e) => e.target.files[0] && searchPhoto(e.target.files[0]));
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files[0]) searchPhoto(e.dataTransfer.files[0]);
});
drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") $("file").click(); });
$("browse").addEventListener("click", browse);
$("filters").addEventListener("submit", (e) => { e.preventDefault(); search(); });
$("clear-photo").addEventListener("click", (e) => { e.preventDefault(); setPhoto(null); search(); });
// Dragging on the photo marks a part of it to search.
const frame = $("photo-frame");
let dragStart = null, dragEl = null;
function photoPoint(e) {
  const rect = $("stage-photo").getBoundingClientRect();
  const { width, height } = photoSize();
  const clamp = (v, max) => Math.min(Math.max(v, 0), max);
  return [clamp(((e.clientX - rect.left) * width) / rect.width, width), clamp(((e.clientY - rect.top) * height) / rect.height, height)];
}
function dragged(e) {
  const [x, y] = photoPoint(e);
  return [Math.min(dragStart[0], x), Math.min(dragStart[1], y), Math.max(dragStart[0], x), Math.max(dragStart[1], y)];
}
frame.addEventListener("pointerdown", (e) => {
  e.preventDefault();
  frame.setPointerCapture(e.pointerId);
  dragStart = photoPoint(e);
  dragEl?.remove();
  dragEl = outline([...dragStart, ...dragStart], "drag");
});
frame.addEventListener("pointermove", (e) => {
  if (!dragStart) return;
  dragEl.remove();
  dragEl = outline(dragged(e), "drag");
});
frame.addEventListener("pointerup", (e) => {
  if (!dragStart) return;
  const box = dragged(e);
  dragStart = null;
  dragEl.remove();
  dragEl = null;
  const { width, height } = photoSize();
  // A click, or a sliver: not a part to search.
  if (box[2] - box[0] < width / 20 || box[3] - box[1] < height / 20) return;
  search(box);
});
loadCategories().then(browse);
