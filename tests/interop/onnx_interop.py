#!/usr/bin/env python3
"""ONNX weights (issue #23) checked against the real torch.onnx exporter, onnx and onnxruntime.

Run with the venv's python (torch 2.x, onnx, onnxruntime):
    onnx_interop.py --ckpt build/ckpt --workdir DIR

For an MLP, a CNN with BatchNorm and a small transformer block (fp32; the MLP
also in fp16), exported with torch.onnx.export (classic exporter), each with
inline data, with external data (onnx.save_model(save_as_external_data=True))
and with every initializer moved to the typed fields (float_data, int32_data,
int64_data, ... as onnx.helper.make_tensor(raw=False) writes them):
  1. `ckpt ls --json --digest` lists every initializer of the main graph in graph
     order with the dtype, shape and sha256 of onnx.numpy_helper.to_array.
  2. `ckpt convert model.onnx out.safetensors|out.pt` holds the same arrays
     (safetensors.numpy, torch.load(weights_only=True)).
  3. `ckpt diff model.pt model.onnx` exits 0, and 1 once one weight differs.
  4. `ckpt convert new.pt out.onnx --template model.onnx` writes a model that
     onnx.checker accepts, whose graph (nodes, inputs, outputs, opsets) equals the
     template's, whose initializers are new.pt's tensors (external data kept
     external, in out.onnx.data), and on which onnxruntime computes what the
     PyTorch model with the new weights computes (fp16: in fp16, within 1e-2).
  5. A shape or dtype mismatch exits 2 naming the key and writes nothing.
  6. Refreshed with the template's own weights, the output is byte-identical to the
     template (external: the same data bytes; only `location` names the new file).
"""
import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import helper, numpy_helper

warnings.filterwarnings("ignore")
FAILURES = []


def check(cond, what):
    if not cond:
        FAILURES.append(what)
        print("FAIL:", what)


def run(ckpt, *args, expect=0):
    p = subprocess.run([ckpt, *args], capture_output=True, text=True, timeout=300)
    check(p.returncode == expect, f"ckpt {' '.join(args)} exited {p.returncode} (expected {expect}): {p.stderr.strip()}")
    return p


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(8, 16)
        self.fc2 = torch.nn.Linear(16, 4)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


class CNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 6, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(6)
        self.fc = torch.nn.Linear(6, 5)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        return self.fc(y.mean(dim=(2, 3)))


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.ln1 = torch.nn.LayerNorm(16)
        self.qkv = torch.nn.Linear(16, 48)
        self.proj = torch.nn.Linear(16, 16)
        self.ln2 = torch.nn.LayerNorm(16)
        self.ff1 = torch.nn.Linear(16, 32)
        self.ff2 = torch.nn.Linear(32, 16)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).reshape(b, t, 3, 2, c // 2).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-1, -2) / (c // 2) ** 0.5, dim=-1)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(b, t, c))
        return x + self.ff2(torch.nn.functional.gelu(self.ff1(self.ln2(x))))


def randomize(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in list(model.parameters()) + [b for b in model.buffers() if b.is_floating_point()]:
            t.copy_(torch.randn(t.shape, generator=g, dtype=torch.float32).to(t.dtype) * 0.5)
        for name, b in model.named_buffers():
            if name.endswith("running_var"):
                b.copy_(b.abs() + 0.5)
    return model


def export(model, x, path):
    torch.onnx.export(model, (x,), path, dynamo=False, do_constant_folding=False,
                      input_names=["x"], output_names=["y"], opset_version=17)


def to_typed(src, dst):
    """Every initializer moved from raw_data to its typed field."""
    m = onnx.load(src)
    new = []
    for init in m.graph.initializer:
        arr = numpy_helper.to_array(init)
        dt = init.data_type
        if dt == onnx.TensorProto.FLOAT16:
            vals = arr.flatten()  # make_tensor packs the bits into int32_data
        else:
            vals = arr.flatten().tolist()
        new.append(helper.make_tensor(init.name, dt, list(arr.shape), vals, raw=False))
    del m.graph.initializer[:]
    m.graph.initializer.extend(new)
    check(all(not t.HasField("raw_data") for t in m.graph.initializer), "typed variant has no raw_data")
    onnx.save_model(m, dst)


def to_external(src, dst):
    m = onnx.load(src)
    onnx.save_model(m, dst, save_as_external_data=True, all_tensors_to_one_file=True,
                    location=os.path.basename(dst) + ".data", size_threshold=0)


def digest(arr):
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


TORCH_DTYPE = {np.dtype("float32"): "float32", np.dtype("float16"): "float16", np.dtype("float64"): "float64",
               np.dtype("int64"): "int64", np.dtype("int32"): "int32", np.dtype("int8"): "int8",
               np.dtype("uint8"): "uint8", np.dtype("bool"): "bool", np.dtype("int16"): "int16"}


def check_listing(ckpt, path, tag):
    m = onnx.load(path)  # resolves external data
    expected = [(t.name, numpy_helper.to_array(t)) for t in m.graph.initializer]
    p = run(ckpt, "ls", path, "--json", "--digest")
    if p.returncode != 0:
        return
    got = json.loads(p.stdout)
    check(got["format"] == "onnx", f"{tag}: format {got['format']}")
    names = [t["path"] for t in got["tensors"]]
    check(names == [n for n, _ in expected], f"{tag}: names/order {names} != {[n for n, _ in expected]}")
    for t, (n, a) in zip(got["tensors"], expected):
        check(t["dtype"] == TORCH_DTYPE[a.dtype], f"{tag}: {n} dtype {t['dtype']} != {a.dtype}")
        check(t["shape"] == list(a.shape), f"{tag}: {n} shape {t['shape']} != {list(a.shape)}")
        check(t["sha256"] == digest(a), f"{tag}: {n} sha256 differs from numpy_helper.to_array")
    out = path + ".safetensors"
    run(ckpt, "convert", path, out)
    from safetensors.numpy import load_file
    st = load_file(out)
    for n, a in expected:
        check(n in st and st[n].dtype == a.dtype and np.array_equal(st[n], a), f"{tag}: convert to safetensors: {n}")
    out_pt = path + ".pt"
    run(ckpt, "convert", path, out_pt)
    sd = torch.load(out_pt, weights_only=True)
    check(list(sd) == [n for n, _ in expected], f"{tag}: convert to .pt: names")
    for n, a in expected:
        check(n in sd and np.array_equal(sd[n].numpy(), a), f"{tag}: convert to .pt: {n}")
    run(ckpt, "info", path)


def graph_without_initializers(m):
    g = onnx.GraphProto()
    g.CopyFrom(m.graph)
    del g.initializer[:]
    return g.SerializeToString(), [o.SerializeToString() for o in m.opset_import], m.ir_version, m.producer_name


def check_refresh(ckpt, work, template, model, x, tag, fp16=False):
    """new weights into the template; onnxruntime against torch."""
    new_model = randomize(model, seed=1234)
    sd = new_model.state_dict()
    new_pt = os.path.join(work, f"{tag}.new.pt")
    torch.save(sd, new_pt)
    out = os.path.join(work, f"{tag}.refreshed.onnx")
    p = run(ckpt, "convert", new_pt, out, "--template", template)
    if p.returncode != 0:
        return
    try:
        onnx.checker.check_model(out)
    except Exception as e:  # noqa: BLE001
        check(False, f"{tag}: onnx.checker refuses the refreshed model: {e}")
    t, o = onnx.load(template), onnx.load(out)
    check(graph_without_initializers(t) == graph_without_initializers(o), f"{tag}: graph changed by refresh")
    ext_t = [i.data_location for i in onnx.load(template, load_external_data=False).graph.initializer]
    ext_o = [i.data_location for i in onnx.load(out, load_external_data=False).graph.initializer]
    check(ext_t == ext_o, f"{tag}: data locations changed {ext_t} -> {ext_o}")
    if any(ext_o):
        check(os.path.exists(out + ".data"), f"{tag}: no {out}.data next to the output")
    replaced = 0
    for init in o.graph.initializer:
        a = numpy_helper.to_array(init)
        if init.name in sd:
            replaced += 1
            check(np.array_equal(a, sd[init.name].numpy()), f"{tag}: {init.name} not the new weights")
    check(replaced > 0, f"{tag}: nothing replaced")
    tol = dict(rtol=1e-2, atol=1e-2) if fp16 else dict(rtol=1e-4, atol=1e-5)
    sess = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
    got = sess.run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        want = new_model(x).numpy()
    check(got.dtype == want.dtype and np.allclose(got, want, **tol),
          f"{tag}: onnxruntime on the refreshed model differs from torch (max {np.abs(got - want).max()})")
    old = sess_run(template, x)
    check(not np.allclose(old, want, **tol), f"{tag}: the template already computed the new output")
    # A pt equal to the refreshed model's weights: diff says equal; one changed: 1.
    run(ckpt, "diff", new_pt, out)
    bad = dict(sd)
    k = next(n for n in bad if bad[n].is_floating_point())
    bad[k] = bad[k] + 1
    bad_pt = os.path.join(work, f"{tag}.bad.pt")
    torch.save(bad, bad_pt)
    run(ckpt, "diff", bad_pt, out, expect=1)
    # Mismatches: exit 2 naming the key, nothing written.
    wrong = dict(sd)
    wrong[k] = torch.zeros(list(sd[k].shape) + [1], dtype=sd[k].dtype)
    wrong_pt = os.path.join(work, f"{tag}.wrong.pt")
    torch.save(wrong, wrong_pt)
    nothing = os.path.join(work, f"{tag}.nothing.onnx")
    p = run(ckpt, "convert", wrong_pt, nothing, "--template", template, expect=2)
    check(k in p.stderr and "shape mismatch" in p.stderr, f"{tag}: mismatch message: {p.stderr.strip()}")
    check(not os.path.exists(nothing) and not os.path.exists(nothing + ".data"), f"{tag}: written despite mismatch")
    wrong[k] = sd[k].double()
    torch.save(wrong, wrong_pt)
    p = run(ckpt, "convert", wrong_pt, nothing, "--template", template, expect=2)
    check(k in p.stderr and "dtype mismatch" in p.stderr, f"{tag}: dtype mismatch message: {p.stderr.strip()}")


def sess_run(path, x):
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--workdir", required=True)
    a = ap.parse_args()
    shutil.rmtree(a.workdir, ignore_errors=True)
    os.makedirs(a.workdir)
    torch.manual_seed(0)
    cases = [("mlp", MLP(), torch.randn(3, 8)), ("cnn", CNN(), torch.randn(2, 3, 8, 8)),
             ("block", Block(), torch.randn(2, 5, 16))]
    for tag, model, x in cases:
        model = randomize(model.eval(), seed=7)
        base = os.path.join(a.workdir, tag + ".onnx")
        export(model, x, base)
        pt = os.path.join(a.workdir, tag + ".pt")
        torch.save(model.state_dict(), pt)
        check(np.allclose(sess_run(base, x), model(x).detach().numpy(), rtol=1e-4, atol=1e-5), f"{tag}: export")
        ext = os.path.join(a.workdir, tag + "_ext", tag + ".onnx")
        os.makedirs(os.path.dirname(ext))
        to_external(base, ext)
        typed = os.path.join(a.workdir, tag + "_typed.onnx")
        to_typed(base, typed)
        for variant, path in (("inline", base), ("external", ext), ("typed", typed)):
            vt = f"{tag}/{variant}"
            check_listing(a.ckpt, path, vt)
            run(a.ckpt, "diff", pt, path)  # the exported weights are the checkpoint's
            check_refresh(a.ckpt, a.workdir, path, model, x, f"{tag}_{variant}")
            if variant != "typed":
                # The template's own weights: the same bytes (data file included).
                same = os.path.join(a.workdir, f"{tag}_{variant}_same", "same.onnx")
                os.makedirs(os.path.dirname(same))
                run(a.ckpt, "convert", pt, same, "--template", path)
                with open(path, "rb") as f1, open(same, "rb") as f2:
                    t_bytes, s_bytes = f1.read(), f2.read()
                if variant == "inline":
                    check(t_bytes == s_bytes, f"{tag}: refresh with the same weights is not byte-identical")
                else:
                    with open(path + ".data", "rb") as f1, open(same + ".data", "rb") as f2:
                        check(f1.read() == f2.read(), f"{tag}: external data not byte-identical")
                    mt = onnx.load(path, load_external_data=False)
                    ms = onnx.load(same, load_external_data=False)
                    for init in mt.graph.initializer:
                        for e in init.external_data:
                            if e.key == "location":
                                e.value = "same.onnx.data"
                    check(mt.SerializeToString() == ms.SerializeToString(),
                          f"{tag}: external refresh changed more than the location")
    # fp16: the MLP in half precision (raw_data and int32_data packing).
    mlp16 = randomize(MLP().eval(), seed=3).half()
    path16 = os.path.join(a.workdir, "mlp16.onnx")
    export(mlp16, torch.randn(3, 8).half(), path16)
    check(onnx.load(path16).graph.initializer[0].data_type == onnx.TensorProto.FLOAT16, "fp16 export")
    typed16 = os.path.join(a.workdir, "mlp16_typed.onnx")
    to_typed(path16, typed16)
    for variant, path in (("inline", path16), ("typed", typed16)):
        check_listing(a.ckpt, path, f"mlp16/{variant}")
        check_refresh(a.ckpt, a.workdir, path, MLP().eval().half(), torch.randn(3, 8).half(), f"mlp16_{variant}",
                      fp16=True)
    # Other dtypes through onnx.helper: int8/int64/bool/double/uint8/int16, raw and typed.
    arrays = {"i8": np.array([-3, 4, 127], np.int8), "i64": np.array([[-(2**40), 5]], np.int64),
              "b": np.array([True, False, True]), "f64": np.array([1.5, -2.25]), "u8": np.array([0, 255], np.uint8),
              "i16": np.array([-300, 300], np.int16), "i32": np.array([7, -7], np.int32)}
    for raw in (True, False):
        inits = []
        for n, arr in arrays.items():
            if raw:
                inits.append(numpy_helper.from_array(arr, n))
            else:
                inits.append(helper.make_tensor(n, helper.np_dtype_to_tensor_dtype(arr.dtype), list(arr.shape),
                                                arr.flatten().tolist(), raw=False))
        g = helper.make_graph([helper.make_node("Identity", ["i8"], ["y"])], "g", [],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.INT8, [3])], inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        path = os.path.join(a.workdir, f"dtypes_{'raw' if raw else 'typed'}.onnx")
        onnx.save_model(m, path)
        check_listing(a.ckpt, path, f"dtypes/{'raw' if raw else 'typed'}")
    if FAILURES:
        print(f"{len(FAILURES)} failure(s)")
        sys.exit(1)
    print("onnx_interop: all checks passed")


if __name__ == "__main__":
    main()
