#!/usr/bin/env bash
# Sets everything up, indexes the committed demo catalogue (60 Magento Luma
# products) and shows recommendations for a photo and for a product.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
bin=./target/release/lookalike
db=${LOOKALIKE_DEMO_DB:-target/demo.db}
$bin index demo/catalogue.csv --db "$db"
echo
echo "== products that look like demo/images/mh01.jpg (a grey hoodie)"
$bin search demo/images/mh01.jpg --db "$db" -k 5
echo
echo "== products that look like product 24-MG01 (Endurance Watch)"
$bin similar 24-MG01 --db "$db" -k 5
echo
echo "== serving the demo catalogue (web page and REST API); Ctrl-C stops"
exec $bin serve --db "$db" --read-only --port "${PORT:-8080}"
