"""Builds crates/lookalike-cli/tests/fixtures/luma-shop/ from ../shared/datasets/magento-luma: ten
products with up to three photos each (longer side 200 px, JPEG q80) in Magento's media layout
(m/h/mh01-gray_main.jpg), the same catalogue as a Magento 2 product export (magento.csv) and as a
Shopify product export (shopify.csv), and one photo of each of two products kept out of both
catalogues as queries (queries/). Run once by a developer; the result is committed. Needs Pillow."""
import csv
import html
import os
import sys
from collections import defaultdict

from PIL import Image

SRC = sys.argv[1] if len(sys.argv) > 1 else "../shared/datasets/magento-luma"
DST = "crates/lookalike-cli/tests/fixtures/luma-shop"
SKUS = ["MH01", "MJ01", "MP01", "MS01", "MT01", "WH01", "WJ01", "WS01", "24-MB01", "24-MG01"]
QUERIES = {"MH01": "mh01-orange_main.jpg", "WJ01": "wj01-red_main.jpg"}
PER_PRODUCT = 3

products = {p["sku"]: p for p in csv.DictReader(open(os.path.join(SRC, "products.csv"), newline=""))}
images = defaultdict(list)
for row in csv.DictReader(open(os.path.join(SRC, "images.csv"), newline="")):
    images[row["sku"]].append(row["image"])


def shrink(source, target):
    os.makedirs(os.path.dirname(target), exist_ok=True)
    image = Image.open(os.path.join(SRC, source)).convert("RGB")
    image.thumbnail((200, 200), Image.LANCZOS)
    image.save(target, quality=80, optimize=True)


def media_path(name):
    return f"/{name[0]}/{name[1]}/{name}"


magento, shopify = [], []
for sku in SKUS:
    p = products[sku]
    names = []
    for source in images[sku]:
        name = os.path.basename(source)
        if name in QUERIES.values():
            shrink(source, os.path.join(DST, "queries", name))
            continue
        if len(names) < PER_PRODUCT:
            shrink(source, os.path.join(DST, media_path(name).lstrip("/")))
            names.append(name)
    category = "Default Category/" + p["category"]
    description = "<p>" + html.escape(p["description"]) + "</p>"
    url_key = "-".join("".join(c if c.isalnum() else " " for c in p["name"].lower()).split())
    magento.append({
        "sku": sku, "name": p["name"], "price": p["price_usd"],
        "categories": "Default Category," + category, "description": description,
        "base_image": media_path(names[0]),
        "additional_images": ",".join(media_path(n) for n in names[1:]), "url_key": url_key,
    })
    for position, name in enumerate(names, start=1):
        first = position == 1
        shopify.append({
            "Handle": url_key, "Title": p["name"] if first else "", "Body (HTML)": description if first else "",
            "Type": p["category"] if first else "", "Variant SKU": sku if first else "",
            "Variant Price": p["price_usd"] if first else "",
            "Image Src": media_path(name).lstrip("/"), "Image Position": position,
        })

for name, rows in [("magento.csv", magento), ("shopify.csv", shopify)]:
    with open(os.path.join(DST, name), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
print(f"{len(magento)} products, {len(shopify)} images in {DST}")
