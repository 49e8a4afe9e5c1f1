"""Writes the whole Magento Luma data set (../shared/datasets/magento-luma) as a lookalike
catalogue for measurements: OUT/catalogue.csv, one row per photo (id, title, category, price,
description + its colours, image as an absolute path), and word queries for its photos, by file
name, for `lookalike eval products --words`: words-type.csv (the product's kind, the last word of
its title: "hoodie"), words-colour.csv (the photo's colour: "orange") and words-type-colour.csv.
Standard library only.   python3 scripts/luma_catalogue.py ../shared/datasets/magento-luma OUT"""
import csv
import os
import re
import sys

src, out = os.path.abspath(sys.argv[1]), sys.argv[2]
os.makedirs(out, exist_ok=True)
products = {p["sku"]: p for p in csv.DictReader(open(os.path.join(src, "products.csv"), newline=""))}
images = list(csv.DictReader(open(os.path.join(src, "images.csv"), newline="")))


def kind(title):
    words = [w for w in re.findall(r"[A-Za-z]+", title) if len(w) >= 3 and w.lower() not in ("foot",)]
    return words[-1].lower() if words else None


def colour(product, image):
    colours = [c.lower() for c in product["colors"].split("|") if c]
    named = re.match(r"[a-z0-9]+-([a-z]+)_", os.path.basename(image))
    found = named.group(1) if named else None
    return found if found in colours else None


rows, words = [], {"type": [], "colour": [], "type-colour": []}
for image in images:
    p = products[image["sku"]]
    colours = ", ".join(c for c in p["colors"].split("|") if c)
    description = p["description"] + (f" Colours: {colours}." if colours else "")
    rows.append({
        "id": p["sku"], "title": p["name"], "category": p["category"], "price": p["price_usd"],
        "description": description, "image": os.path.join(src, image["image"]),
    })
    name = os.path.basename(image["image"])
    k, c = kind(p["name"]), colour(p, image["image"])
    for key, value in [("type", k), ("colour", c), ("type-colour", k and c and f"{k} {c}")]:
        if value:
            words[key].append({"image": name, "words": value})

with open(os.path.join(out, "catalogue.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
for key, listed in words.items():
    with open(os.path.join(out, f"words-{key}.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "words"])
        writer.writeheader()
        writer.writerows(listed)
print(f"{len(products)} products, {len(rows)} photos; words for "
      + ", ".join(f"{len(v)} photos ({k})" for k, v in words.items()) + f" in {out}")
