#!/usr/bin/env bash
# examples/resume_training/run.sh — Python trained, C++ resumes, Python resumes again.
#
#   bash examples/resume_training/run.sh              # torch 2.x: the venv's Python and its wheel's LibTorch
#   bash examples/resume_training/run.sh --torch 1.13 # Debian's python3-torch and libtorch-dev
#
# 1. builds train.cpp against ckpt + the LibTorch adapter (build dir: build-example-<torch>
#    at the repository root, kept between runs);
# 2. train checkpoint.pt (written by Python: epoch 100) -> resumed.pt (epoch 300);
# 3. check.py: Python loads resumed.pt, restores model + Adam, checks and trains on.
# Needs what `bash scripts/setup` installs.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
TORCH=2
if [[ "${1:-}" == --torch ]]; then TORCH="${2:?--torch 1.13 or 2}"; fi
VENV="${CKPT_VENV:-$HOME/.cache/ckpt/venv}"
case "$TORCH" in
  1.13) PY=/usr/bin/python3; PREFIX=() ;;
  2*) PY="$VENV/bin/python"
      PREFIX=("-DCMAKE_PREFIX_PATH=$("$PY" -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')") ;;
  *) echo "run.sh: --torch 1.13 or 2" >&2; exit 2 ;;
esac
[[ -x "$PY" ]] || { echo "run.sh: $PY not found; run: bash scripts/setup" >&2; exit 1; }
BUILD="$ROOT/build-example-torch$TORCH"
OUT="$BUILD/resumed.pt"

echo "== build ($BUILD)"
mkdir -p "$BUILD"
cmake -S "$HERE" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release "${PREFIX[@]}" >"$BUILD/configure.log" 2>&1 ||
  { cat "$BUILD/configure.log"; exit 1; }
cmake --build "$BUILD" --target train -j "${CKPT_JOBS:-2}"
echo "== C++ resumes the Python checkpoint"
"$BUILD/train" "$HERE/checkpoint.pt" "$OUT" 200
echo "== Python resumes the C++ checkpoint"
cd "$HERE" && PYTHONDONTWRITEBYTECODE=1 "$PY" check.py "$HERE/checkpoint.pt" "$OUT"
