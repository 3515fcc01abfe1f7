#!/usr/bin/env bash
# Regenerates tests/data/valid/libtorch113/ (Debian's LibTorch 1.13, checked by torch 1.13)
# and tests/data/valid/libtorch2/ (the LibTorch inside the venv's torch wheel, checked by
# that torch). Needs scripts/setup. Usage: bash tests/data/libtorch/make.sh
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
valid="$here/../valid"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
venv="${CKPT_VENV:-$HOME/.cache/ckpt/venv}"

build() {  # build OUT INCLUDE_ROOT LIBDIR
  g++ -std=c++20 -O1 "$here/make_libtorch_fixtures.cpp" -I"$2" -I"$2/torch/csrc/api/include" \
    -L"$3" -Wl,-rpath,"$3" -ltorch -ltorch_cpu -lc10 -o "$1"
}

mkdir -p "$valid/libtorch113" "$valid/libtorch2"
build "$tmp/make113" /usr/include /usr/lib/x86_64-linux-gnu
"$tmp/make113" "$valid/libtorch113"
/usr/bin/python3 "$here/make_expected.py" "$valid/libtorch113"

torch_dir="$("$venv/bin/python" -c 'import os, torch; print(os.path.dirname(torch.__file__))')"
build "$tmp/make2" "$torch_dir/include" "$torch_dir/lib"
"$tmp/make2" "$valid/libtorch2"
"$venv/bin/python" "$here/make_expected.py" "$valid/libtorch2"
