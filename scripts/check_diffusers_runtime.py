#!/usr/bin/env python3
"""Loads A³FT exports (`a3ft export --format diffusers` of an adapter or a3ft run) with diffusers
and the runtime module the export wrote, and runs them.

    check_diffusers_runtime.py DIR DEBUG.npz T.npy OUT.npz [DIR DEBUG.npz T.npy OUT.npz ...]

For each export: `DiffusionPipeline.from_pretrained(DIR, trust_remote_code=True)` must give the
DDPM/DDIM pipeline with an `A3FTUNet2DModel` that holds every tensor of the weights file (the
`adapter.*` ones included, none missing or left over), `AutoModel.from_pretrained(DIR,
trust_remote_code=True)` the same UNet with the same outputs, and the pipeline must sample three
steps to finite images. Saved again with `save_pretrained` (the pipeline, and the UNet alone), it
must load from the new folder with its runtime module and give the same outputs. Without remote code the pipeline must refuse to load (diffusers' message
names trust_remote_code) and `UNet2DModel.from_pretrained(DIR, subfolder="unet")` must load the
plain network. Writes to OUT.npz the UNet's output at `x_t` of DEBUG.npz (from `a3ft debug step`)
and timesteps T.npy as `model_output`, the plain network's as `plain_output`. One process for
every export: importing diffusers takes seconds. Used by tests/diffusers.rs; exits non-zero on
any failure.
"""
import os
import sys
import tempfile

import numpy as np
import torch
from diffusers import AutoModel, DDIMPipeline, DDPMPipeline, DiffusionPipeline, UNet2DModel
from safetensors.torch import load_file


def check(folder, debug, t_path, out):
    pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
    if not isinstance(pipe, (DDPMPipeline, DDIMPipeline)):
        sys.exit(f"{folder}: pipeline is {type(pipe).__name__}")
    unet = pipe.unet.eval()
    if type(unet).__name__ != "A3FTUNet2DModel":
        sys.exit(f"{folder}: the pipeline's UNet is {type(unet).__name__}, not the export's A3FTUNet2DModel")
    stored = load_file(os.path.join(folder, "unet", "diffusion_pytorch_model.safetensors"))
    state = unet.state_dict()
    if set(stored) != set(state):
        sys.exit(f"{folder}: key sets differ: missing {sorted(set(state) - set(stored))[:4]}, extra {sorted(set(stored) - set(state))[:4]}")
    if not any(k.startswith("adapter.") for k in stored):
        sys.exit(f"{folder}: the weights hold no adapter tensors")
    for k, v in state.items():
        if not torch.equal(v, stored[k]):
            sys.exit(f"{folder}: {k}: loaded tensor differs from the file")
    alone = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    if type(alone).__name__ != "A3FTUNet2DModel":
        sys.exit(f"{folder}: AutoModel gave {type(alone).__name__}")
    x_t, t = torch.from_numpy(np.load(debug)["x_t"]), torch.from_numpy(np.load(t_path))
    with torch.no_grad():
        a, b = unet(x_t, t).sample, alone(x_t, t).sample
    if not torch.equal(a, b):
        sys.exit(f"{folder}: the pipeline's UNet and AutoModel's differ")
    images = pipe(batch_size=2, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np").images
    size = unet.config.sample_size
    if images.shape != (2, size, size, 3) or not np.isfinite(images).all():
        sys.exit(f"{folder}: pipeline sampled {images.shape}, finite: {np.isfinite(images).all()}")
    # What a user does next: save the pipeline (or the UNet) to a folder of their own and load that.
    with tempfile.TemporaryDirectory() as tmp:
        pipe.save_pretrained(os.path.join(tmp, "pipe"))
        unet.save_pretrained(os.path.join(tmp, "unet"))
        for where in ["pipe/unet", "unet"]:
            if not os.path.isfile(os.path.join(tmp, where, "a3ft_unet.py")):
                sys.exit(f"{folder}: save_pretrained left the runtime module out of {where}")
        again = DiffusionPipeline.from_pretrained(os.path.join(tmp, "pipe"), trust_remote_code=True).unet.eval()
        alone_again = AutoModel.from_pretrained(os.path.join(tmp, "unet"), trust_remote_code=True).eval()
        with torch.no_grad():
            for what, m in [("the saved pipeline's UNet", again), ("the saved UNet", alone_again)]:
                if type(m).__name__ != "A3FTUNet2DModel" or not torch.equal(m(x_t, t).sample, a):
                    sys.exit(f"{folder}: {what} ({type(m).__name__}) does not give the export's outputs")
    # Without remote code: the pipeline refuses, and the UNet loads as the plain network.
    try:
        DiffusionPipeline.from_pretrained(folder)
        sys.exit(f"{folder}: the pipeline loaded without trust_remote_code")
    except ValueError as e:
        if "trust_remote_code" not in str(e):
            sys.exit(f"{folder}: loading without remote code failed with {e}")
    plain = UNet2DModel.from_pretrained(folder, subfolder="unet").eval()
    if type(plain) is not UNet2DModel:
        sys.exit(f"{folder}: UNet2DModel.from_pretrained gave {type(plain).__name__}")
    with torch.no_grad():
        p = plain(x_t, t).sample
    np.savez(out, model_output=a.numpy(), plain_output=p.numpy())
    print(f"ok: {folder}: {type(pipe).__name__} with {type(unet).__name__}, {len(stored)} tensors, images {images.shape}")


if __name__ == "__main__":
    args = sys.argv[1:]
    if not args or len(args) % 4:
        sys.exit(__doc__)
    for i in range(0, len(args), 4):
        check(*args[i : i + 4])
