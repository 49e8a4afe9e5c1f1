// lookalike's web page: plain ES module, no build step, talks to the JSON API.
const $ = (id) => document.getElementById(id);
const results = $("results"), status = $("status"), errorBox = $("error");
let lastProducts = new Map();
let photo = null; // the dropped photo, kept for searches that change only the words

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

// scoreLabel: how to show a result's score ("similar", "match"), or null for none.
function render(items, scoreLabel) {
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
    body.append(title, meta, row, more);
    card.append(img, body);
    return card;
  }));
}

function setPhoto(file) {
  photo = file;
  $("preview").hidden = !file;
  $("clear-photo").hidden = !file;
  if (file) $("preview").src = URL.createObjectURL(file);
  else $("file").value = "";
}

// Searches with the photo, the words, or both (the server fuses the two rankings).
async function search() {
  showError("");
  const words = $("words").value.trim();
  if (!photo && !words) return browse();
  const form = new FormData();
  if (photo) form.set("image", photo);
  if (words) form.set("q", words);
  form.set("k", "24");
  for (const [key, value] of filterParams()) form.set(key, value);
  if (photo && $("hybrid").checked) form.set("hybrid", "true");
  status.textContent = "Searching…";
  const started = performance.now();
  try {
    const body = await api("/v1/search", { method: "POST", body: form });
    // Words alone score by text relevance, which has no percentage to show.
    render(body.results, photo ? (words ? "match" : "similar") : null);
    const guessed = body.predicted
      ? ` within ${body.predicted.map((p) => `${p.category} (${Math.round(p.probability * 100)}%)`).join(", ")}`
      : "";
    const found = photo ? "similar products" : `products matching “${words}”`;
    status.textContent = `${body.results.length} ${found}${guessed} in ${Math.round(performance.now() - started)} ms`;
  } catch (e) {
    results.replaceChildren();
    status.textContent = "";
    showError(e.message);
  }
}

function searchPhoto(file) {
  setPhoto(file);
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
loadCategories().then(browse);
