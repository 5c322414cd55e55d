#!/usr/bin/env bash
# How much do a smaller face and blur cost a genuine match? Degrades one photo of a person
# (downscaled so the face is N px; Gaussian blur of sigma S) and compares it with ANOTHER photo of
# the same person (genuine) and with another person (impostor), with the f16 models the daemon
# uses. The figures back the `[gbds]` quality bars in the README ("Transactions").
# Needs a release build and ImageMagick (`apt-get install imagemagick`; not used by CI).
# Usage: bash models/quality-study.sh [target/release/camgate]   (CONVERT=path/to/convert)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BIN=${1:-target/release/camgate}
FACES=tests/fixtures/faces
CONVERT=${CONVERT:-/usr/bin/convert}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
sim() {
    "$BIN" face compare --models models --variant f16 "$1" "$2" 2>/dev/null |
        python3 -c 'import json,sys; print("%.3f" % json.load(sys.stdin)["similarity"])'
}
# Box size (px) and the face results' blur (0 sharp .. 1 blurred) of the largest face.
measure() {
    "$BIN" face detect --models models --variant f16 "$1" 2>/dev/null | python3 -c '
import json, sys
faces = json.load(sys.stdin)[0]["faces"]
q = max(faces, key=lambda f: f["quality"]["box_size"])["quality"]
print("%4.0f px  blur %.2f" % (q["box_size"], 100 / (100 + max(q["blur_var"], 0))))'
}
study() {   # photo, another photo of the same person, another person
    local src=$1 same=$2 other=$3
    local base
    base=$(measure "$src" | awk '{print $1}')
    echo "== $(basename "$src") against $(basename "$same") (genuine) and $(basename "$other") (impostor)"
    echo "   as is: $(measure "$src")  genuine $(sim "$src" "$same")  impostor $(sim "$src" "$other")"
    for px in 24 32 40 48 56 64 80 112; do
        "$CONVERT" "$src" -resize "$(python3 -c "print(round(100 * $px / $base, 2))")%" \
            -quality 92 "$TMP/v.jpg" 2>/dev/null
        echo "   face ${px} px: $(measure "$TMP/v.jpg")  genuine $(sim "$TMP/v.jpg" "$same")  impostor $(sim "$TMP/v.jpg" "$other")"
    done
    for sigma in 2 3 4 5 6 8; do
        "$CONVERT" "$src" -gaussian-blur "0x$sigma" -quality 92 "$TMP/v.jpg" 2>/dev/null
        echo "   blur sigma $sigma: $(measure "$TMP/v.jpg")  genuine $(sim "$TMP/v.jpg" "$same")  impostor $(sim "$TMP/v.jpg" "$other")"
    done
}
study "$FACES/obama.jpg" "$FACES/obama2.jpg" "$FACES/biden.jpg"
study "$FACES/obama2.jpg" "$FACES/obama.jpg" "$FACES/biden.jpg"
