#!/usr/bin/env bash
# Makes .venv-bench with the reference runtimes for `lookalike bench embed`:
# ONNX Runtime's Python API and PyTorch (CPU use; the PyPI wheel is large).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-bench
.venv-bench/bin/pip install --disable-pip-version-check -q numpy onnxruntime==1.32.0 torch
echo "now: ./target/release/lookalike bench embed --python .venv-bench/bin/python"
