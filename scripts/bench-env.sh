#!/usr/bin/env bash
# Makes .venv-bench with the peers lookalike measures itself against: ONNX Runtime's Python API and
# PyTorch for `bench embed` (CPU use; the PyPI wheel is large), FAISS, hnswlib and usearch for
# `bench ann`, Pillow and simplejpeg (libjpeg-turbo) for `bench prep`.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-bench
.venv-bench/bin/pip install --disable-pip-version-check -q numpy pillow simplejpeg onnxruntime==1.32.0 torch faiss-cpu==1.15.1 hnswlib==0.8.0 usearch==2.26.6
echo "now: ./target/release/lookalike bench embed|ann|prep --python .venv-bench/bin/python"
