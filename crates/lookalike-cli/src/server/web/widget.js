// lookalike's "You may also like" widget for any shop page:
//
//   <div data-lookalike-product="SKU"></div>
//   <script src="https://lookalike.example/widget.js" async></script>
//
// Each element with data-lookalike-product gets a strip of the products that look like that one
// (image, title, price, and a link to the product's page when the catalogue has its url), read
// from the API on the origin this script came from; `serve --cors-origin` must name the shop's
// origin. Optional attributes: data-lookalike-count (1-24, default 6), data-lookalike-title.
// Rendered in a shadow root, so the shop's CSS and the widget's do not touch; a product the
// catalogue does not know leaves the element empty.
(() => {
  const script = document.currentScript;
  if (!script) return;
  const api = new URL(script.src).origin;

  const css = `
    :host { display: block; font: 14px/1.35 system-ui, sans-serif; color: #1d1d1f; }
    h2 { font-size: 16px; margin: 0 0 8px; }
    ol { display: flex; gap: 12px; overflow-x: auto; list-style: none; margin: 0; padding: 0 0 6px; }
    li { flex: 0 0 150px; min-width: 0; }
    a, span.item { display: block; color: inherit; text-decoration: none; }
    img { width: 150px; height: 150px; object-fit: contain; background: #f4f4f5; border-radius: 6px; }
    .title { margin-top: 6px; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
    .price { font-weight: 600; }
  `;

  function element(tag, className, text) {
    const e = document.createElement(tag);
    if (className) e.className = className;
    if (text != null) e.textContent = text;
    return e;
  }

  function item(product) {
    // Links come from the catalogue, where only http(s) addresses and site paths are accepted.
    const wrapper = product.url ? element("a") : element("span", "item");
    if (product.url) wrapper.href = product.url;
    wrapper.title = product.title ?? product.id;
    const image = element("img");
    image.src = api + product.image;
    image.alt = product.title ?? product.id;
    image.loading = "lazy";
    wrapper.append(image, element("div", "title", product.title ?? product.id));
    if (product.price != null) wrapper.append(element("div", "price", `$${Number(product.price).toFixed(2)}`));
    const li = element("li");
    li.dataset.id = product.id;
    li.append(wrapper);
    return li;
  }

  async function fill(host) {
    if (host.dataset.lookalikeFilled) return;
    host.dataset.lookalikeFilled = "1";
    const id = host.dataset.lookalikeProduct;
    const count = Math.min(Math.max(parseInt(host.dataset.lookalikeCount ?? "6", 10) || 6, 1), 24);
    let results;
    try {
      const response = await fetch(`${api}/v1/products/${encodeURIComponent(id)}/similar?k=${count}`);
      if (!response.ok) return;
      results = (await response.json()).results;
    } catch {
      return; // the shop page stays as it is when lookalike cannot be reached
    }
    if (!results?.length) return;
    const root = host.attachShadow({ mode: "open" });
    const style = element("style");
    style.textContent = css;
    const list = element("ol");
    list.append(...results.map(item));
    root.append(style, element("h2", null, host.dataset.lookalikeTitle ?? "You may also like"), list);
  }

  function start() {
    document.querySelectorAll("[data-lookalike-product]").forEach(fill);
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
