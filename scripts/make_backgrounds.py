#!/usr/bin/env python3
"""Makes crates/lookalike/assets/backgrounds/: 128 phone photos of shoes and hats (clothing-dataset-small,
CC0, training split), their longer side 256 px, that a catalogue's packshots are pasted onto to learn
its kinds (`lookalike train kinds`). Needs Pillow. Usage: make_backgrounds.py ../shared/datasets/clothing-dataset-small"""
import os, random, sys
from PIL import Image

source = os.path.join(sys.argv[1], "train")
out = os.path.join(os.path.dirname(__file__), "..", "crates", "lookalike", "assets", "backgrounds")
photos = sorted(os.path.join(source, kind, name) for kind in ("shoes", "hat") for name in os.listdir(os.path.join(source, kind)))
chosen = random.Random(99).sample(photos, 128)
os.makedirs(out, exist_ok=True)
listing = []
for i, path in enumerate(chosen):
    image = Image.open(path).convert("RGB")
    image.thumbnail((256, 256))
    name = f"{i:03d}.jpg"
    image.save(os.path.join(out, name), quality=80, optimize=True)
    listing.append((name, os.path.relpath(path, sys.argv[1])))
with open(os.path.join(out, "list.rs"), "w") as f:
    f.write("// Made by scripts/make_backgrounds.py; the source of each photo is in PROVENANCE.md.\n&[\n")
    f.writelines(f'    include_bytes!("{name}"),\n' for name, _ in listing)
    f.write("]\n")
with open(os.path.join(out, "PROVENANCE.md"), "w") as f:
    f.write("# Backgrounds for learning a catalogue's kinds\n\n"
            "128 photos from clothing-dataset-small (Alexey Grigorev, CC0 1.0: https://creativecommons.org/publicdomain/zero/1.0/),\n"
            "training split, folders `shoes` and `hat`, chosen with Python's `random.Random(99).sample`, their longer side\n"
            "reduced to 256 pixels (JPEG quality 80) by `scripts/make_backgrounds.py`. Each file and its source:\n\n")
    f.writelines(f"- `{name}`: `{src}`\n" for name, src in listing)
