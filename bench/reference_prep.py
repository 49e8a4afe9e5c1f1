"""What a photo costs before the network in the usual Python stack, for `lookalike bench prep`.

Pillow (libjpeg-turbo inside its wheel) decodes, resizes the shorter side bilinearly with
antialiasing and crops the centre, numpy makes the (x - mean) / scale CHW tensor: what
torchvision's Resize + CenterCrop + ToTensor + Normalize do, without torch. simplejpeg
(libjpeg-turbo) is timed too when it is installed, decoding alone, at full size and at the
smallest libjpeg-turbo scale that keeps the shorter side at least the resize target.

Prints one JSON line per stage: {"runtime", "stage", "ms_per_photo"} (the best of `--passes`).
"""

import argparse
import hashlib
import io
import json
import sys
import time


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", required=True, help="a file listing one photo path per line")
    parser.add_argument("--resize-shorter", type=int, required=True)
    parser.add_argument("--crop", type=int, required=True)
    parser.add_argument("--mean", type=float, default=127.0)
    parser.add_argument("--scale", type=float, default=128.0)
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args()
    try:
        import numpy as np
        from PIL import Image
    except ImportError as e:
        print(json.dumps({"runtime": "Pillow", "error": f"not installed: {e}"}))
        return
    paths = [line.rstrip("\n") for line in open(args.files) if line.strip()]
    best = {}

    def keep(stage, seconds):
        best[stage] = min(best.get(stage, float("inf")), seconds)

    for _ in range(args.passes):
        totals = {"read file": 0.0, "content hash (SHA-256)": 0.0, "decode": 0.0, "resize + crop + tensor": 0.0}
        for path in paths:
            t0 = time.perf_counter()
            with open(path, "rb") as f:
                data = f.read()
            t1 = time.perf_counter()
            hashlib.sha256(data).hexdigest()
            t2 = time.perf_counter()
            image = Image.open(io.BytesIO(data)).convert("RGB")
            t3 = time.perf_counter()
            w, h = image.size
            if w <= h:
                size = (args.resize_shorter, round(h * args.resize_shorter / w))
            else:
                size = (round(w * args.resize_shorter / h), args.resize_shorter)
            resized = image.resize(size, Image.BILINEAR)
            left, top = (size[0] - args.crop) // 2, (size[1] - args.crop) // 2
            cropped = resized.crop((left, top, left + args.crop, top + args.crop))
            tensor = ((np.asarray(cropped, dtype=np.float32) - args.mean) / args.scale).transpose(2, 0, 1)
            np.ascontiguousarray(tensor)
            t4 = time.perf_counter()
            for stage, seconds in zip(totals, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                totals[stage] += seconds
        for stage, seconds in totals.items():
            keep(stage, seconds)
    for stage, seconds in best.items():
        print(json.dumps({"runtime": "Pillow", "stage": stage, "ms_per_photo": seconds * 1e3 / len(paths)}))

    try:
        import simplejpeg
    except ImportError:
        return
    datas = []
    for path in paths:
        with open(path, "rb") as f:
            datas.append(f.read())
    jpegs = [d for d in datas if d[:2] == b"\xff\xd8"]
    if not jpegs:
        return
    for stage, options in [
        ("decode (JPEG, full size)", {}),
        ("decode (JPEG, DCT-scaled)", {"min_width": args.resize_shorter, "min_height": args.resize_shorter}),
    ]:
        seconds = float("inf")
        for _ in range(args.passes):
            t = time.perf_counter()
            for data in jpegs:
                simplejpeg.decode_jpeg(data, "RGB", **options)
            seconds = min(seconds, time.perf_counter() - t)
        print(json.dumps({"runtime": "simplejpeg", "stage": stage, "ms_per_photo": seconds * 1e3 / len(jpegs)}))


if __name__ == "__main__":
    sys.exit(main())
