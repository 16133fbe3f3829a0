#!/usr/bin/env python3
"""Loads a folder written by `a3ft export --format diffusers` with diffusers itself and runs it.

    check_diffusers_export.py DIR DEBUG.npz T.npy OUT.npz

Checks that `UNet2DModel.from_pretrained(DIR)` and `(DIR, subfolder="unet")` load every tensor of
the file (no key missing or left over) and agree, that `DiffusionPipeline.from_pretrained(DIR)`
gives the DDPM/DDIM pipeline and samples two steps, then writes the UNet's output at `x_t` of
DEBUG.npz (from `a3ft debug step`) and the timesteps T.npy to OUT.npz as `model_output`. Used by tests/diffusers.rs; exits non-zero on any failure.
"""
import os
import sys

import numpy as np
import torch
from diffusers import DDIMPipeline, DDPMPipeline, DiffusionPipeline, UNet2DModel
from safetensors.torch import load_file


def main(folder, debug, t_path, out):
    unet = UNet2DModel.from_pretrained(folder).eval()
    sub = UNet2DModel.from_pretrained(folder, subfolder="unet").eval()
    stored = load_file(os.path.join(folder, "unet", "diffusion_pytorch_model.safetensors"))
    keys = set(unet.state_dict())
    if set(stored) != keys:
        sys.exit(f"key sets differ: missing {sorted(keys - set(stored))[:4]}, extra {sorted(set(stored) - keys)[:4]}")
    for k, v in unet.state_dict().items():
        if not torch.equal(v, stored[k]):
            sys.exit(f"{k}: loaded tensor differs from the file")
    pipe = DiffusionPipeline.from_pretrained(folder)
    if not isinstance(pipe, (DDPMPipeline, DDIMPipeline)):
        sys.exit(f"pipeline is {type(pipe).__name__}")
    images = pipe(batch_size=1, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np").images
    if not np.isfinite(images).all():
        sys.exit("pipeline produced non-finite images")
    x_t, t = torch.from_numpy(np.load(debug)["x_t"]), torch.from_numpy(np.load(t_path))
    with torch.no_grad():
        a, b = unet(x_t, t).sample, sub(x_t, t).sample
    if not torch.equal(a, b):
        sys.exit("the top-level and unet/ models differ")
    np.savez(out, model_output=a.numpy())
    print(f"ok: {type(pipe).__name__}, {len(keys)} tensors, image {images.shape}")


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    main(*sys.argv[1:])
