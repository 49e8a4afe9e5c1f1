// The web page, end to end: the real `lookalike serve` over the committed demo
// catalogue, driven by Debian's Chromium through playwright-core.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { createServer } from "node:http";
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const root = resolve(fileURLToPath(new URL(".", import.meta.url)), "../..");
const binary = process.env.LOOKALIKE_BIN ?? join(root, "target/debug/lookalike");
const artifacts = process.env.LOOKALIKE_ARTIFACTS ?? join(root, "artifacts/web");
const demoPhoto = join(root, "demo/images/24-mb01.jpg"); // Joust Duffle Bag, Gear/Bags
// 1000 × 500: the Joust Duffle Bag at 50..450 × 50..450, the Bruno Compete Hoodie at 550..950.
const twoProducts = join(root, "tests/web/fixtures/two-products.jpg");

let workDir, db, server, baseUrl, browser;

function startServer(db, extra = []) {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(binary, ["serve", "--db", db, "--read-only", "--port", "0", ...extra], {
      env: { ...process.env, LOOKALIKE_EXIT_ON_STDIN_EOF: "1" },
      stdio: ["pipe", "pipe", "inherit"],
    });
    let seen = "";
    child.stdout.on("data", (chunk) => {
      seen += chunk;
      const match = seen.match(/serving on (http:\/\/\S+)/);
      if (match) resolvePromise({ child, url: match[1] });
    });
    child.on("exit", (code) => reject(new Error(`lookalike serve exited with ${code}: ${seen}`)));
  });
}

before(async () => {
  workDir = mkdtempSync(join(tmpdir(), "lookalike-web-"));
  db = join(workDir, "demo.db");
  execFileSync(binary, ["index", join(root, "demo/catalogue.csv"), "--db", db], { stdio: "inherit" });
  ({ child: server, url: baseUrl } = await startServer(db));
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
  });
});

after(async () => {
  await browser?.close();
  server?.kill();
  if (workDir) rmSync(workDir, { recursive: true, force: true });
});

test("a dropped photo finds its category, 'more like this' follows, bad uploads explain themselves", async () => {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const pageErrors = [];
  page.on("pageerror", (e) => pageErrors.push(e.message));
  await page.goto(baseUrl);

  // The catalogue is browsable before any search.
  await page.locator("#results .card").first().waitFor();
  await page.locator("#category option", { hasText: "Gear/Bags" }).waitFor({ state: "attached" });

  await page.setInputFiles("#file", demoPhoto);
  await page.locator("#status", { hasText: "similar products" }).waitFor();
  const cards = page.locator("#results .card");
  assert.equal(await cards.count(), 24);
  assert.equal(await cards.first().getAttribute("data-category"), "Gear/Bags");
  assert.match(await cards.first().locator(".score").innerText(), /^\d+% similar$/);
  assert.equal(await page.locator("#preview").isVisible(), true);
  mkdirSync(artifacts, { recursive: true });
  await page.screenshot({ path: join(artifacts, "search-results.png"), fullPage: true });

  // "More like this" on the second result: its neighbours replace the grid.
  const second = cards.nth(1);
  const secondId = await second.getAttribute("data-id");
  const secondTitle = await second.locator(".title").innerText();
  await second.locator("button.more").click();
  await page.locator("#status", { hasText: `Products that look like ${secondTitle}` }).waitFor();
  const neighbours = await page.locator("#results .card").evaluateAll((els) => els.map((e) => e.dataset.id));
  assert.ok(neighbours.length > 0, "more like this shows results");
  assert.ok(!neighbours.includes(secondId), "a product is not its own recommendation");

  // Product details open from a result image.
  await page.locator("#results .card img").first().click();
  await page.locator("#details[open]").waitFor();
  assert.notEqual(await page.locator("#details-title").innerText(), "");
  await page.locator("#details button.close").click();

  // A text file posing as a photo: a readable error, and the page keeps working.
  const bogus = join(workDir, "not-a-photo.jpg");
  writeFileSync(bogus, "these are shipping notes, not pixels\n");
  await page.setInputFiles("#file", bogus);
  const error = page.locator("#error");
  await error.waitFor({ state: "visible" });
  assert.match(await error.innerText(), /image/i);
  await page.screenshot({ path: join(artifacts, "bad-upload.png") });

  await page.setInputFiles("#file", demoPhoto);
  await page.locator("#status", { hasText: "similar products" }).waitFor();
  assert.equal(await error.isVisible(), false);

  assert.deepEqual(pageErrors, []);
  await page.close();
});

test("the page fits a phone screen", async () => {
  const page = await browser.newPage({ viewport: { width: 390, height: 844 }, isMobile: true });
  await page.goto(baseUrl);
  await page.locator("#results .card").first().waitFor();
  const sticking = await page.evaluate(() => {
    const width = document.documentElement.clientWidth;
    return [...document.querySelectorAll("#query *, #results .card")]
      .filter((e) => e.getBoundingClientRect().right > width + 0.5)
      .map((e) => e.id || e.className || e.tagName);
  });
  assert.deepEqual(sticking, [], "elements run off the right edge of a phone screen");
  await page.screenshot({ path: join(artifacts, "phone.png") });
  await page.close();
});

for (const [name, viewport, phone] of [
  ["desktop", { width: 1280, height: 900 }, false],
  ["phone", { width: 390, height: 844 }, true],
]) {
  test(`${name}: both products of a photo are found, a dragged box searches a part, "why?" shows what matched`, async () => {
    const page = await browser.newPage({ viewport, isMobile: phone, hasTouch: phone });
    const pageErrors = [];
    page.on("pageerror", (e) => pageErrors.push(e.message));
    await page.goto(baseUrl);
    await page.locator("#results .card").first().waitFor();
    await page.setInputFiles("#file", twoProducts);
    await page.locator("#status", { hasText: "products found in the photo" }).waitFor();

    // A chip and an outline per product found; each chip shows its own product's results.
    const chips = page.locator("#regions button");
    const count = await chips.count();
    assert.ok(count >= 2, `${count} regions`);
    assert.equal(await page.locator("#boxes .box").count(), count);
    const leaders = [];
    for (let i = 0; i < count; i++) {
      await chips.nth(i).click();
      assert.equal(await chips.nth(i).getAttribute("aria-pressed"), "true");
      assert.equal(await page.locator("#boxes .box.active").count(), 1);
      leaders.push(await page.locator("#results .card").first().getAttribute("data-id"));
    }
    assert.ok(leaders.includes("24-MB01") && leaders.includes("MH03"), leaders.join());
    await chips.first().click();
    mkdirSync(artifacts, { recursive: true });
    await page.screenshot({ path: join(artifacts, `regions-${name}.png`), fullPage: true });

    // A box dragged around the hoodie searches that part only.
    const photo = await page.locator("#stage-photo").boundingBox();
    const at = (x, y) => [photo.x + (photo.width * x) / 1000, photo.y + (photo.height * y) / 500];
    await page.mouse.move(...at(530, 30));
    await page.mouse.down();
    await page.mouse.move(...at(750, 250), { steps: 4 });
    await page.mouse.move(...at(970, 470), { steps: 4 });
    await page.mouse.up();
    await page.locator("#status", { hasText: "for the part you marked" }).waitFor();
    assert.equal(await page.locator("#results .card").first().getAttribute("data-id"), "MH03");
    assert.equal(await page.locator("#boxes .box.active").count(), 1);
    await page.screenshot({ path: join(artifacts, `box-${name}.png`), fullPage: true });

    // "Why?" from the keyboard: both photos with their heat maps, the hoodie's part of the photo boxed.
    const why = page.locator("#results .card").first().locator("button.why");
    const explained = page.waitForResponse((r) => r.url().endsWith("/v1/explain"));
    await why.focus();
    await page.keyboard.press("Enter");
    const answer = await (await explained).json();
    assert.ok((answer.query_box[0] + answer.query_box[2]) / 2 > 500, JSON.stringify(answer.query_box));
    await page.locator("#why[open]").waitFor();
    const drawn = await page.evaluate(() =>
      ["why-query", "why-match"].map((id) => {
        const canvas = document.getElementById(id);
        return canvas.width > 0 && canvas.height > 0 && canvas.getBoundingClientRect().width > 0;
      }),
    );
    assert.deepEqual(drawn, [true, true]);
    assert.match(await page.locator("#why-title").innerText(), /Bruno Compete Hoodie/);
    const sticking = await page.evaluate(() => {
      const width = document.documentElement.clientWidth;
      return [...document.querySelectorAll("#stage *, #why *")]
        .filter((e) => e.getBoundingClientRect().right > width + 0.5)
        .map((e) => e.id || e.className || e.tagName);
    });
    assert.deepEqual(sticking, [], "elements run off the right edge");
    await page.screenshot({ path: join(artifacts, `why-${name}.png`) });
    await page.keyboard.press("Escape");
    assert.equal(await page.locator("#why[open]").count(), 0);
    assert.deepEqual(pageErrors, []);
    await page.close();
  });
}

test("the widget renders similar products on a shop page of another origin", async () => {
  // The shop: a static page on its own port, embedding the widget from lookalike's origin.
  let lookalikeUrl;
  const shop = createServer((request, response) => {
    response.writeHead(200, { "content-type": "text/html; charset=utf-8" });
    response.end(`<!doctype html><html><head><title>Joust Duffle Bag</title></head><body>
      <h1>Joust Duffle Bag</h1><p>$34.00</p>
      <div id="related" data-lookalike-product="24-MB01" data-lookalike-count="4"></div>
      <script src="${lookalikeUrl}/widget.js" async></script></body></html>`);
  });
  await new Promise((done) => shop.listen(0, "127.0.0.1", done));
  const shopOrigin = `http://127.0.0.1:${shop.address().port}`;
  const { child, url } = await startServer(db, ["--cors-origin", shopOrigin]);
  lookalikeUrl = url;
  try {
    const page = await browser.newPage({ viewport: { width: 1000, height: 600 } });
    const problems = [];
    page.on("pageerror", (e) => problems.push(e.message));
    page.on("console", (m) => m.type() === "error" && problems.push(m.text()));
    await page.goto(`${shopOrigin}/`);
    const items = page.locator("#related li");
    await items.first().waitFor();
    assert.equal(await items.count(), 4);
    const shown = await items.evaluateAll((lis) =>
      lis.map((li) => ({
        id: li.dataset.id,
        href: li.querySelector("a")?.getAttribute("href"),
        title: li.querySelector(".title").textContent,
        price: li.querySelector(".price")?.textContent,
      })),
    );
    assert.ok(!shown.some((i) => i.id === "24-MB01"), "the product is not its own recommendation");
    for (const item of shown) {
      assert.match(item.href, /^https:\/\/luma\.example\/.+\.html$/);
      assert.notEqual(item.title, "");
      assert.match(item.price, /^\$\d+\.\d\d$/);
    }
    await page.waitForFunction(() =>
      [...document.querySelector("#related").shadowRoot.querySelectorAll("img")].every((i) => i.complete && i.naturalWidth > 0),
    );
    mkdirSync(artifacts, { recursive: true });
    await page.screenshot({ path: join(artifacts, "widget.png") });
    assert.deepEqual(problems, []);
    await page.close();
  } finally {
    child.kill();
    shop.close();
  }
});

test("a product of several photos shows the view that matched, and all its views in its details", async () => {
  const shop = join(root, "crates/lookalike-cli/tests/fixtures/luma-shop");
  const shopDb = join(workDir, "shop.db");
  execFileSync(binary, ["index", join(shop, "magento.csv"), "--db", shopDb], { stdio: "inherit" });
  const { child, url } = await startServer(shopDb);
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    const problems = [];
    page.on("pageerror", (e) => problems.push(e.message));
    await page.goto(url);
    await page.locator("#results .card").first().waitFor();
    await page.setInputFiles("#file", join(shop, "queries/mh01-orange_main.jpg"));
    await page.locator("#status", { hasText: "similar products" }).waitFor();
    const first = page.locator("#results .card").first();
    assert.equal(await first.getAttribute("data-id"), "MH01");
    assert.equal(await first.getAttribute("data-views"), "3");
    assert.match(await first.locator("img").getAttribute("src"), /^\/v1\/products\/MH01\/image(s\/\d)?$/);
    await first.locator("img").click();
    await page.locator("#details[open]").waitFor();
    const thumbs = page.locator("#details-views img");
    assert.equal(await thumbs.count(), 3);
    await thumbs.nth(2).click();
    assert.equal(await page.locator("#details-image").getAttribute("src"), "/v1/products/MH01/images/2");
    mkdirSync(artifacts, { recursive: true });
    await page.screenshot({ path: join(artifacts, "product-views.png") });

    // Words beside the photo: both rankings fused; then the words alone.
    await page.keyboard.press("Escape");
    await page.fill("#words", "women hoodie");
    await page.press("#words", "Enter");
    await page.locator("#results .card .score", { hasText: "match" }).first().waitFor();
    const fused = await page.locator("#results .card").evaluateAll((cards) => cards.map((c) => c.dataset.id));
    assert.deepEqual(fused.slice(0, 2).sort(), ["MH01", "WH01"]);
    await page.screenshot({ path: join(artifacts, "photo-and-words.png") });
    await page.click("#clear-photo");
    await page.locator("#status", { hasText: "products matching" }).waitFor();
    const byWords = await page.locator("#results .card").evaluateAll((cards) => cards.map((c) => c.dataset.id));
    // Any of the words; the product with both comes first.
    assert.equal(byWords[0], "WH01");
    assert.ok(byWords.includes("MH01") && byWords.includes("WJ01"), byWords.join());
    assert.equal(await page.locator("#preview").isHidden(), true);
    assert.equal(await page.locator("#results .card .score").count(), 0);
    await page.fill("#words", "-- !!");
    await page.press("#words", "Enter");
    await page.locator("#error", { hasText: "no words" }).waitFor();
    assert.deepEqual(problems, []);
    await page.close();
  } finally {
    child.kill();
  }
});
