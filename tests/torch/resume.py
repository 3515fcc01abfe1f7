"""Resume equivalence between Python torch and LibTorch through ckpt::torch.

    python resume.py --resume build/tests/torch/ckpt_torch_resume --optimizer adam --workdir /tmp/r

Python trains a small MLP (float64, fixed seed, fixed synthetic data stored in
the checkpoint) and the C++ program ckpt_torch_resume (tests/torch/resume.cpp)
takes over, in both directions:

  python-starts: Python trains N steps and saves {model, optimizer, epoch, step,
                 data}; C++ loads it, trains M steps and saves; Python loads that
                 (torch.load(weights_only=True)) and compares parameters, buffers
                 and optimizer state with its own uninterrupted N+M run.
  cxx-starts:    Python saves the initial model and an optimizer that has not
                 stepped; C++ trains N steps and saves; Python loads that into a
                 fresh model and optimizer, trains M more steps and compares with
                 the same uninterrupted N+M run.

Everything must agree within 1e-6 (absolute). Run with the Python whose torch
version matches the LibTorch the program was built against. Exit status 0 when
both directions agree.
"""

import argparse
import os
import subprocess
import sys

import torch

N_STEPS = 6
M_STEPS = 5
ATOL = 1e-6


def make_model():
    torch.manual_seed(0)
    m = torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Tanh(), torch.nn.Linear(8, 3)
    )
    return m.double().train()


def make_data():
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(32, 4, generator=g, dtype=torch.float64)
    y = torch.randn(32, 3, generator=g, dtype=torch.float64)
    return x, y


def make_optimizer(name, params):
    # Non-default hyper-parameters, so that the checkpoint's values must be used.
    if name == "sgd":
        return torch.optim.SGD(params, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)
    if name == "adam":
        return torch.optim.Adam(params, lr=0.01, betas=(0.8, 0.99), amsgrad=True, weight_decay=0.001)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=0.01, weight_decay=0.05)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=0.01, momentum=0.5, centered=True, alpha=0.9)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=0.1, lr_decay=0.01, initial_accumulator_value=0.1)
    raise SystemExit(f"unknown optimizer {name}")


def train(model, opt, x, y, steps):
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()


def save(path, model, opt, step, x, y):
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "epoch": 0,
            "step": step,
            "data": {"x": x, "y": y},
        },
        path,
    )


# torch 1.13's weights-only unpickler has no BINFLOAT opcode: it cannot read any
# file holding a Python float (an optimizer's lr), even one torch 1.13 saved itself.
WEIGHTS_ONLY = int(torch.__version__.split(".")[0]) >= 2


def load(path, name):
    ckpt = torch.load(path, weights_only=WEIGHTS_ONLY)
    model = make_model()
    model.load_state_dict(ckpt["model"])  # strict
    opt = make_optimizer(name, model.parameters())
    opt.load_state_dict(ckpt["optimizer"])
    return ckpt, model, opt


def as_float(v):
    return float(v.item()) if torch.is_tensor(v) else float(v)


def compare(what, model, opt, ref_model, ref_opt):
    """Returns a list of differences (empty when everything agrees)."""
    errors = []
    sd, ref_sd = model.state_dict(), ref_model.state_dict()
    if list(sd) != list(ref_sd):
        errors.append(f"{what}: model keys differ: {list(sd)} vs {list(ref_sd)}")
    worst = 0.0
    for k, ref in ref_sd.items():
        t = sd[k]
        if t.shape != ref.shape or t.dtype != ref.dtype:
            errors.append(f"{what}: {k}: {t.dtype}{list(t.shape)} vs {ref.dtype}{list(ref.shape)}")
            continue
        d = (t.double() - ref.double()).abs().max().item() if t.numel() else 0.0
        worst = max(worst, d)
        if d > ATOL:
            errors.append(f"{what}: {k} differs by {d:.3g}")
    osd, ref_osd = opt.state_dict(), ref_opt.state_dict()
    if set(osd["state"]) != set(ref_osd["state"]):
        errors.append(f"{what}: optimizer state for params {sorted(osd['state'])} vs {sorted(ref_osd['state'])}")
    for i, ref_state in ref_osd["state"].items():
        state = osd["state"].get(i, {})
        if set(state) != set(ref_state):
            errors.append(f"{what}: optimizer state {i}: keys {sorted(state)} vs {sorted(ref_state)}")
            continue
        for k, ref in ref_state.items():
            v = state[k]
            if k == "step":
                if as_float(v) != as_float(ref):
                    errors.append(f"{what}: optimizer state {i}.step = {as_float(v)}, expected {as_float(ref)}")
                continue
            d = (v - ref).abs().max().item()
            worst = max(worst, d)
            if d > ATOL:
                errors.append(f"{what}: optimizer state {i}.{k} differs by {d:.3g}")
    for g, ref_g in zip(osd["param_groups"], ref_osd["param_groups"]):
        for k, ref in ref_g.items():
            if g.get(k) != ref:
                errors.append(f"{what}: param_groups key {k!r}: {g.get(k)!r} vs {ref!r}")
    print(f"{what}: largest difference {worst:.3g}")
    return errors


def layout_errors(what, saved, py_opt):
    """The optimizer dict C++ wrote must be laid out as this torch's own state_dict()."""
    errors = []
    own = py_opt.state_dict()
    for g, ref_g in zip(saved["param_groups"], own["param_groups"]):
        if list(g) != list(ref_g):
            errors.append(f"{what}: param_groups keys {list(g)}, Python writes {list(ref_g)}")
        for k in g:
            if k in ref_g and type(g[k]) is not type(ref_g[k]):
                errors.append(f"{what}: param_groups {k!r} is a {type(g[k]).__name__}, "
                              f"Python writes a {type(ref_g[k]).__name__}")
    for i, st in own["state"].items():
        for k, v in st.items():
            w = saved["state"].get(i, {}).get(k)
            if type(w) is not type(v) or (torch.is_tensor(v) and (w.dtype != v.dtype or w.shape != v.shape)):
                errors.append(f"{what}: state {i}.{k}: {w!r:.60} where Python has {v!r:.60}")
    return errors


def run_cxx(args, src, dst, steps, extra=()):
    cmd = [args.resume, "--in", src, "--out", dst, "--optimizer", args.optimizer, "--steps", str(steps), *extra]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--resume", required=True, help="the ckpt_torch_resume program")
    ap.add_argument("--optimizer", required=True)
    ap.add_argument("--workdir", required=True)
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    print(f"torch {torch.__version__}, optimizer {args.optimizer}, N={N_STEPS}, M={M_STEPS}")
    x, y = make_data()

    ref = make_model()
    ref_opt = make_optimizer(args.optimizer, ref.parameters())
    train(ref, ref_opt, x, y, N_STEPS + M_STEPS)

    errors = []
    # Python starts, C++ resumes.
    model = make_model()
    opt = make_optimizer(args.optimizer, model.parameters())
    train(model, opt, x, y, N_STEPS)
    a = os.path.join(args.workdir, "python_start.pt")
    b = os.path.join(args.workdir, "cxx_resumed.pt")
    save(a, model, opt, N_STEPS, x, y)
    sd_path = os.path.join(args.workdir, "cxx_model.pt")
    run_cxx(args, a, b, M_STEPS, ["--state-dict-out", sd_path])
    # The plain state dict loads the safe way in every torch version, strictly.
    plain = make_model()
    plain.load_state_dict(torch.load(sd_path, weights_only=True))
    if list(torch.load(sd_path, weights_only=True)) != list(ref.state_dict()):
        errors.append("state dict: keys or their order differ from Python's")
    # Negative control: the state after N steps must NOT pass for N+M steps,
    # or the comparison below proves nothing.
    _, early, early_opt = load(a, args.optimizer)
    if not compare("control (N steps vs N+M, must differ)", early, early_opt, ref, ref_opt):
        errors.append("control: the state after N steps compares equal to N+M steps")
    ckpt, model, opt = load(b, args.optimizer)
    errors += layout_errors("python-starts", ckpt["optimizer"], ref_opt)
    if ckpt["step"] != N_STEPS + M_STEPS:
        errors.append(f"python-starts: step {ckpt['step']}, expected {N_STEPS + M_STEPS}")
    errors += compare("python-starts", model, opt, ref, ref_opt)
    errors += compare("python-starts (model.pt)", plain, opt, ref, ref_opt)

    # C++ starts (from Python's initial weights), Python resumes.
    model = make_model()
    opt = make_optimizer(args.optimizer, model.parameters())
    c = os.path.join(args.workdir, "initial.pt")
    d = os.path.join(args.workdir, "cxx_start.pt")
    save(c, model, opt, 0, x, y)
    run_cxx(args, c, d, N_STEPS)
    ckpt, model, opt = load(d, args.optimizer)
    errors += layout_errors("cxx-starts", ckpt["optimizer"], ref_opt)
    train(model, opt, x, y, M_STEPS)
    errors += compare("cxx-starts", model, opt, ref, ref_opt)

    for e in errors:
        print("FAIL", e)
    print("resume equivalence:", "FAILED" if errors else "ok")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
