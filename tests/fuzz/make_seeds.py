#!/usr/bin/env python3
"""Builds the seed corpus of every fuzz target from the test fixtures.

    python3 tests/fuzz/make_seeds.py --fixtures tests/data/valid [--dcp tests/data/dcp] --out DIR

writes DIR/<target>/<name> for the targets unpickler, zip, torch_zip, legacy,
torchscript, safetensors and dcp_metadata:
  - every fixture goes to the targets of its format (detected from its bytes,
    as ckpt does): torch zip archives to zip and torch_zip, TorchScript
    archives to zip, torchscript and torch_zip, legacy and tar files to legacy
    and torch_zip, safetensors files to safetensors and torch_zip;
  - every pickle inside them goes to unpickler: the *.pkl records of the zip
    archives and each of the pickles a legacy file concatenates;
  - every `.metadata` of a torch.distributed.checkpoint directory under --dcp
    goes to dcp_metadata and unpickler.
Uses only the standard library (no torch). Output names are derived from
the fixture paths, so the corpus is the same on every run.
"""
import argparse
import io
import os
import pickletools
import shutil
import struct
import tarfile
import zipfile

TARGETS = ["unpickler", "zip", "torch_zip", "legacy", "torchscript", "safetensors", "dcp_metadata", "onnx"]
LEGACY_MAGIC = bytes([0x80, 0x02, 0x8A, 0x0A, 0x6C, 0xFC, 0x9C, 0x46, 0xF9, 0x20, 0x6A, 0xA8, 0x50, 0x19])


def detect(data):
    if data[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                names = z.namelist()
        except zipfile.BadZipFile:
            return "zip"
        return "torchscript" if any(n.endswith("/constants.pkl") for n in names) else "torch_zip"
    if data.startswith(LEGACY_MAGIC):
        return "legacy"
    if len(data) > 262 and data[257:262] == b"ustar":
        return "tar"
    if len(data) >= 9 and data[8:9] == b"{":
        return "safetensors"
    return None


def _varint(v):
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def _field(number, payload):
    if isinstance(payload, int):
        return _varint(number << 3) + _varint(payload)
    return _varint((number << 3) | 2) + _varint(len(payload)) + payload


def onnx_seeds():
    """Small ModelProtos (no onnx package needed): raw_data, each typed field, external data."""
    def tensor(name, dtype, dims, data):
        return b"".join(_field(1, d) for d in dims) + _field(2, dtype) + _field(8, name.encode()) + data

    def model(tensors):
        graph = _field(1, _field(1, b"x") + _field(2, b"y") + _field(4, b"Identity")) + _field(2, b"g")
        graph += b"".join(_field(5, t) for t in tensors)
        return _field(1, 8) + _field(2, b"seed") + _field(7, graph) + _field(8, _field(2, 17))

    f32 = struct.pack("<3f", 1.0, -2.0, 0.5)
    ext = _field(13, _field(1, b"location") + _field(2, b"w.bin")) + _field(13, _field(1, b"offset") + _field(2, b"0"))
    return {
        "raw.onnx": model([tensor("w", 1, [3], _field(9, f32)), tensor("b", 7, [1, 1], _field(9, struct.pack("<q", -4)))]),
        "float_data.onnx": model([tensor("w", 1, [3], _field(4, f32))]),
        "int32_fp16.onnx": model([tensor("h", 10, [2], _field(5, _varint(0x3C00) + _varint(0xC000)))]),
        "int64_double.onnx": model([tensor("i", 7, [2], _field(7, _varint(3) + _varint(2**64 - 3))),
                                    tensor("d", 11, [1], _field(10, struct.pack("<d", 2.5)))]),
        "external.onnx": model([tensor("e", 1, [3], ext + _field(14, 1))]),
    }


def split_pickles(data):
    """The pickles a legacy file starts with (up to the raw storage bytes)."""
    out, pos = [], 0
    while pos < len(data):
        stream = io.BytesIO(data[pos:])
        end = None
        try:
            for op, _arg, at in pickletools.genops(stream):
                if op.name == "STOP":
                    end = at + 1
                    break
        except Exception:
            break
        if end is None:
            break
        out.append(data[pos:pos + end])
        pos += end
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fixtures", required=True)
    ap.add_argument("--dcp", default="", help="a folder of torch.distributed.checkpoint directories")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    for t in TARGETS:
        d = os.path.join(args.out, t)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)

    def put(target, name, data):
        with open(os.path.join(args.out, target, name), "wb") as f:
            f.write(data)

    counts = dict.fromkeys(TARGETS, 0)
    for root, _dirs, files in sorted(os.walk(args.fixtures)):
        for fn in sorted(files):
            path = os.path.join(root, fn)
            with open(path, "rb") as f:
                data = f.read()
            fmt = detect(data)
            if fmt is None:
                continue  # expected.json and the like
            base = os.path.relpath(path, args.fixtures).replace(os.sep, "_")
            targets = {"torch_zip": ["zip", "torch_zip"], "zip": ["zip"],
                       "torchscript": ["zip", "torchscript", "torch_zip"],
                       "legacy": ["legacy", "torch_zip"], "tar": ["legacy", "torch_zip"],
                       "safetensors": ["safetensors", "torch_zip"]}[fmt]
            for t in targets:
                put(t, base, data)
                counts[t] += 1
            pickles = []
            if fmt in ("torch_zip", "torchscript"):
                with zipfile.ZipFile(io.BytesIO(data)) as z:
                    pickles = [(n, z.read(n)) for n in z.namelist() if n.endswith(".pkl")]
            elif fmt == "legacy":
                pickles = [(str(i), p) for i, p in enumerate(split_pickles(data))]
            elif fmt == "tar":
                with tarfile.open(fileobj=io.BytesIO(data)) as tf:
                    for m in tf.getmembers():
                        if m.isfile():
                            for i, p in enumerate(split_pickles(tf.extractfile(m).read())):
                                pickles.append((f"{m.name}.{i}", p))
            for n, p in pickles:
                put("unpickler", base + "." + n.replace("/", "_"), p)
                counts["unpickler"] += 1
    for root, _dirs, files in sorted(os.walk(args.dcp)) if args.dcp else []:
        if ".metadata" in files:
            with open(os.path.join(root, ".metadata"), "rb") as f:
                data = f.read()
            base = os.path.relpath(root, args.dcp).replace(os.sep, "_") + ".metadata"
            for t in ("dcp_metadata", "unpickler"):
                put(t, base, data)
                counts[t] += 1
    for name, data in onnx_seeds().items():
        put("onnx", name, data)
        counts["onnx"] += 1
    print("seeds: " + ", ".join(f"{t} {counts[t]}" for t in TARGETS))


if __name__ == "__main__":
    main()
