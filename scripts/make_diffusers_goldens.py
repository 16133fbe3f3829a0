#!/usr/bin/env python3
"""Golden outputs of diffusers itself for a3ft's diffusers support (tests/fixtures/diffusers/).

For each configuration below (shaped like the public unconditional checkpoints, at small width),
builds a `UNet2DModel` with every tensor randomised (zero-initialised layers would hide errors),
saves it with its scheduler as a model folder, and records on fixed inputs:
  x_t (scheduler.add_noise), model_output (the UNet at x_t, t), mse (per example, against the
  prediction_type's target), one DDPM step on all timesteps and two with 10 inference steps
  at the third-last and the last of them, and DDIM steps (10 inference steps, at a middle and the
  final timestep, η = 0 and η = 0.5).

Run from the repository root with the project venv (`pip install diffusers==0.42.1`):
    .venv/bin/python scripts/make_diffusers_goldens.py tests/fixtures/diffusers
"""
import json
import os
import sys

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from diffusers.models.attention_processor import Attention
from diffusers.models.resnet import ResnetBlock2D

CONFIGS = {
    # google/ddpm-cifar10-32: attention at one level, one head, TF-style padding, [sin|cos] shifted.
    "cifar10-like": dict(
        unet=dict(sample_size=16, block_out_channels=[16, 32, 32], layers_per_block=2,
                  down_block_types=["DownBlock2D", "AttnDownBlock2D", "DownBlock2D"],
                  up_block_types=["UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
                  attention_head_dim=None, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1,
                  norm_eps=1e-6, norm_num_groups=4),
        scheduler=("DDPMScheduler", dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=0.0001,
                                         beta_end=0.02, variance_type="fixed_small", clip_sample=True)),
        legacy_bin=True),
    # google/ddpm-ema-church-256 / celebahq-256: six levels, attention at the 16 px level only.
    "church-like": dict(
        unet=dict(sample_size=32, block_out_channels=[8, 8, 16, 16, 32, 32], layers_per_block=1,
                  down_block_types=["DownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"],
                  up_block_types=["UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"],
                  attention_head_dim=None, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1,
                  norm_eps=1e-6, norm_num_groups=4),
        scheduler=("DDPMScheduler", dict(num_train_timesteps=1000, beta_schedule="linear", variance_type="fixed_large",
                                         clip_sample=True, timestep_spacing="trailing"))),
    # diffusers' train_unconditional.py defaults: multi-head attention, [cos|sin], cosine betas, v-prediction.
    "train-unconditional-like": dict(
        unet=dict(sample_size=16, block_out_channels=[16, 16, 32, 32], layers_per_block=2,
                  down_block_types=["DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"],
                  up_block_types=["UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
                  attention_head_dim=8, norm_num_groups=8),
        scheduler=("DDIMScheduler", dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                                         prediction_type="v_prediction", clip_sample=False, steps_offset=1,
                                         set_alpha_to_one=False))),
    # Everything else UNet2DModel offers that a3ft supports, in one model.
    "variants": dict(
        unet=dict(sample_size=16, out_channels=6, block_out_channels=[16, 32, 32], layers_per_block=1,
                  down_block_types=["AttnDownBlock2D", "AttnDownBlock2D", "DownBlock2D"],
                  up_block_types=["UpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D"],
                  attention_head_dim=16, resnet_time_scale_shift="scale_shift", downsample_type="resnet",
                  upsample_type="resnet", center_input_sample=True, mid_block_scale_factor=1.414,
                  time_embedding_dim=48, norm_num_groups=4, norm_eps=1e-5),
        scheduler=("DDPMScheduler", dict(num_train_timesteps=500, beta_schedule="scaled_linear", beta_start=0.00085,
                                         beta_end=0.012, prediction_type="sample", clip_sample=True, clip_sample_range=2.0,
                                         steps_offset=1, variance_type="learned_range"))),
    # No mid block; every block with attention and a given attention-norm group count.
    "no-mid": dict(
        unet=dict(sample_size=8, block_out_channels=[16, 32], layers_per_block=1,
                  down_block_types=["AttnDownBlock2D", "AttnDownBlock2D"], up_block_types=["AttnUpBlock2D", "AttnUpBlock2D"],
                  mid_block_type=None, attention_head_dim=4, norm_num_groups=4, attn_norm_num_groups=2),
        scheduler=("DDPMScheduler", dict(num_train_timesteps=200, beta_schedule="linear", beta_start=0.001, beta_end=0.05,
                                         variance_type="fixed_small_log", prediction_type="epsilon", clip_sample=False,
                                         timestep_spacing="trailing"))),
}


def randomise(model, gen):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) / fan_in ** 0.5)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))


def target(sched, x0, noise, t):
    kind = sched.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "sample":
        return x0
    return sched.get_velocity(x0, noise, t)


def main(out_root):
    torch.manual_seed(0)
    for i, (name, c) in enumerate(CONFIGS.items()):
        out = os.path.join(out_root, name)
        gen = torch.Generator().manual_seed(100 + i)
        unet = UNet2DModel(**c["unet"]).eval()
        randomise(unet, gen)
        cls_name, sched_kw = c["scheduler"]
        sched = (DDPMScheduler if cls_name == "DDPMScheduler" else DDIMScheduler)(**sched_kw)
        unet.save_pretrained(os.path.join(out, "unet"), safe_serialization=not c.get("legacy_bin"))
        if c.get("legacy_bin"):
            # Older diffusers releases named the attention projections query/key/value/proj_attn.
            sd = unet.state_dict()
            old = {}
            for k, v in sd.items():
                for new, legacy in [(".to_q.", ".query."), (".to_k.", ".key."), (".to_v.", ".value."), (".to_out.0.", ".proj_attn.")]:
                    k = k.replace(new, legacy)
                old[k] = v
            torch.save(old, os.path.join(out, "unet", "diffusion_pytorch_model.bin"))
        sched.save_pretrained(os.path.join(out, "scheduler"))
        T = sched.config.num_train_timesteps
        s = c["unet"]["sample_size"]
        b = 3
        x0 = torch.rand((b, 3, s, s), generator=gen) * 2 - 1
        noise = torch.randn((b, 3, s, s), generator=gen)
        t = torch.tensor([0, T // 2 + 7, T - 1])
        ddpm = DDPMScheduler.from_config(sched.config)
        g = {}
        with torch.no_grad():
            x_t = ddpm.add_noise(x0, noise, t)
            out_t = unet(x_t, t).sample
            tgt = target(ddpm, x0, noise, t)
            mse = ((out_t[:, :3] - tgt) ** 2).mean(dim=(1, 2, 3))
            g.update(x0=x0, noise=noise, t=t, x_t=x_t, model_output=out_t, mse=mse)

            def step_inputs(ts, seed):
                sample = ddpm.add_noise(x0, noise, torch.full((b,), ts))
                return sample, unet(sample, ts).sample, torch.randn((b, 3, s, s), generator=torch.Generator().manual_seed(seed))

            # DDPM over every training timestep, at one timestep.
            ts = T // 3
            sample, mo, z = step_inputs(ts, 1)
            prev = DDPMScheduler.from_config(sched.config).step(mo, ts, sample, generator=torch.Generator().manual_seed(1)).prev_sample
            g.update(ddpm_t=torch.tensor([ts]), ddpm_sample=sample, ddpm_output=mo, ddpm_noise=z, ddpm_prev=prev)
            # DDPM with 10 inference steps, at the third-last of them.
            d10 = DDPMScheduler.from_config(sched.config)
            d10.set_timesteps(10)
            ts = int(d10.timesteps[-3])
            sample, mo, z = step_inputs(ts, 2)
            prev = d10.step(mo, ts, sample, generator=torch.Generator().manual_seed(2)).prev_sample
            g.update(ddpm10_t=torch.tensor([ts]), ddpm10_sample=sample, ddpm10_output=mo, ddpm10_noise=z, ddpm10_prev=prev)
            # ... and at the last of them (noise is added there when steps_offset puts it above 0).
            ts = int(d10.timesteps[-1])
            sample, mo, z = step_inputs(ts, 4)
            prev = d10.step(mo, ts, sample, generator=torch.Generator().manual_seed(4)).prev_sample
            g.update(ddpm10last_t=torch.tensor([ts]), ddpm10last_sample=sample, ddpm10last_output=mo, ddpm10last_noise=z, ddpm10last_prev=prev)
            # DDIM with 10 inference steps at a middle and the final timestep, η = 0 and 0.5.
            ddim = DDIMScheduler.from_config(sched.config)
            ddim.set_timesteps(10)
            for tag, ts in [("mid", int(ddim.timesteps[4])), ("last", int(ddim.timesteps[-1]))]:
                sample, mo, z = step_inputs(ts, 3)
                # DDIMScheduler takes the prediction only (a learned variance's channels are dropped).
                p0 = ddim.step(mo[:, :3], ts, sample, eta=0.0).prev_sample
                p5 = ddim.step(mo[:, :3], ts, sample, eta=0.5, variance_noise=z).prev_sample
                g.update({f"ddim_{tag}_t": torch.tensor([ts]), f"ddim_{tag}_sample": sample, f"ddim_{tag}_output": mo,
                          f"ddim_{tag}_noise": z, f"ddim_{tag}_prev_eta0": p0, f"ddim_{tag}_prev_eta05": p5})
        arrays = {k: v.numpy().astype(np.int64 if v.dtype == torch.int64 else np.float32) for k, v in g.items()}
        np.savez(os.path.join(out, "golden.npz"), **arrays)
        for k in ("x0", "noise", "t"):
            np.save(os.path.join(out, f"{k}.npy"), arrays[k])
        # Parameters by module kind, counted by diffusers' own module classes.
        def count(kind):
            return sum(p.numel() for m in unet.modules() if isinstance(m, kind) for p in m.parameters())
        with open(os.path.join(out, "params.json"), "w") as f:
            json.dump({"params": sum(p.numel() for p in unet.parameters()), "attention": count(Attention),
                       "residual": count(ResnetBlock2D)}, f)
        print(name, sum(p.numel() for p in unet.parameters()), "params; max |out|", float(out_t.abs().max()))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/diffusers")
