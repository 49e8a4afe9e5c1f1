"""Builds demo/ from ../shared/datasets/magento-luma: 4 products of each of the 15
categories (their main photo, longer side 320 px, JPEG q85) and demo/catalogue.csv.
Run once by a developer; the result is committed. Needs Pillow."""
import csv
import os
import re
import sys
from collections import defaultdict

from PIL import Image


def product_url(name):
    """The product page a Magento shop would have, on a placeholder domain (.example is reserved)."""
    return "https://luma.example/" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") + ".html"


SRC = sys.argv[1] if len(sys.argv) > 1 else "../shared/datasets/magento-luma"
DST = "demo"
PER_CATEGORY = 4

with open(os.path.join(SRC, "products.csv"), newline="") as f:
    products = list(csv.DictReader(f))
by_category = defaultdict(list)
for p in products:
    by_category[p["category"]].append(p)

os.makedirs(os.path.join(DST, "images"), exist_ok=True)
rows = []
for category in sorted(by_category):
    for p in sorted(by_category[category], key=lambda p: p["sku"])[:PER_CATEGORY]:
        image = Image.open(os.path.join(SRC, p["main_image"])).convert("RGB")
        image.thumbnail((320, 320), Image.LANCZOS)
        name = p["sku"].lower() + ".jpg"
        image.save(os.path.join(DST, "images", name), quality=85, optimize=True)
        rows.append({"id": p["sku"], "title": " ".join(p["name"].split()), "price": p["price_usd"],
                     "category": category, "description": p["description"], "url": product_url(p["name"]),
                     "image": "images/" + name})

with open(os.path.join(DST, "catalogue.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=["id", "title", "price", "category", "description", "url", "image"])
    writer.writeheader()
    writer.writerows(rows)
print(f"{len(rows)} products in {DST}/catalogue.csv")
