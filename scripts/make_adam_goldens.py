"""Golden outputs of torch.optim.Adam for tests/optim.rs.

Three parameters in two learning-rate groups (the trainer's base and adapter groups), five
steps with fixed gradients whose scale changes by 10x a step, so the bias corrections and
epsilon matter. Run: .venv/bin/python scripts/make_adam_goldens.py tests/fixtures/adam
"""
import sys
from pathlib import Path

import numpy as np
import torch

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
g = torch.Generator().manual_seed(0)
shapes = {"a": (3, 4), "b": (5,), "c": (2, 2, 2)}
lrs = {"a": 2e-4, "b": 2e-4, "c": 1e-3}
init = {k: torch.randn(s, generator=g, dtype=torch.float64).float() for k, s in shapes.items()}
steps = 5
grads = {k: [torch.randn(s, generator=g, dtype=torch.float64).float() for _ in range(steps)] for k, s in shapes.items()}
# Gradient scale differs per step so the bias corrections matter.
for k in grads:
    for i in range(steps):
        grads[k][i] *= 10.0 ** (i - 2)

params = {k: torch.nn.Parameter(v.clone()) for k, v in init.items()}
opt = torch.optim.Adam(
    [{"params": [params["a"], params["b"]], "lr": 2e-4}, {"params": [params["c"]], "lr": 1e-3}],
    betas=(0.9, 0.999),
    eps=1e-8,
)
arrays = {}
for k, v in init.items():
    arrays[f"init.{k}"] = v.numpy()
for i in range(steps):
    for k, p in params.items():
        p.grad = grads[k][i].clone()
        arrays[f"grad.{k}.{i}"] = grads[k][i].numpy()
    opt.step()
    for k, p in params.items():
        arrays[f"param.{k}.{i}"] = p.detach().numpy().copy()
for k, p in params.items():
    st = opt.state[p]
    arrays[f"exp_avg.{k}"] = st["exp_avg"].numpy()
    arrays[f"exp_avg_sq.{k}"] = st["exp_avg_sq"].numpy()
np.savez(out / "expected.npz", **arrays)
print("wrote", out / "expected.npz", "torch", torch.__version__)
