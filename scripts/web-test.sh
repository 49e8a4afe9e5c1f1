#!/usr/bin/env bash
# End-to-end test of the web page in headless Debian Chromium (playwright-core from npm).
# Installs Chromium and Node.js from Debian when missing; expects the debug `lookalike`
# binary (built by `cargo test`) unless LOOKALIKE_BIN says otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_install() {
    local sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v node >/dev/null && command -v npm >/dev/null || missing+=(nodejs npm)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]} from Debian"
    apt_install "${missing[@]}"
fi

cd tests/web
npm ci --no-audit --no-fund --loglevel=error
npm test
echo "screenshots: artifacts/web/"
