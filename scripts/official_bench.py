"""Times the official improved-diffusion code's training step — the peer a user would otherwise run —
for `make bench` (scripts/bench.sh). The code is imported from a checkout whose path is given
(MIT; never copied into this repository):

    python scripts/official_bench.py --peer ../shared/peers/improved-diffusion --preset imagenet64 \
        --method full --batch-size 4 --steps 2 --warmup 1 --precision fp32

The step is the official `TrainLoop.run_step` without its distributed wrapper: a uniform draw of t,
`GaussianDiffusion.training_losses` (hybrid loss), backward, AdamW (weight decay 0, as the
official default). `--method attention` trains only the `AttentionBlock`s (the official code
has no partial fine-tuning; freezing is `requires_grad_(False)`, what a user would write);
`--precision bf16` wraps forward and loss in `torch.autocast(device, bfloat16)`. Prints one
JSON object with the fields of `a3ft bench --json` that bench.sh reads.
"""
import argparse
import json
import sys
import time

import torch

PRESETS = {
    # The official ImageNet-64 flags (improved-diffusion README), as a3ft's `--preset imagenet64`.
    "imagenet64": dict(image_size=64, num_channels=128, num_res_blocks=3, learn_sigma=True, diffusion_steps=4000,
                       noise_schedule="cosine", attention_resolutions="16,8", num_heads=4, dropout=0.0),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--peer", required=True, help="improved-diffusion checkout (the folder holding improved_diffusion/)")
    ap.add_argument("--preset", default="imagenet64", choices=sorted(PRESETS))
    ap.add_argument("--method", default="full", choices=["full", "attention"])
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    import os
    if not os.path.isfile(os.path.join(args.peer, "improved_diffusion", "script_util.py")):
        sys.exit(f"--peer {args.peer}: no improved-diffusion checkout there (expected improved_diffusion/script_util.py)")
    sys.path.insert(0, args.peer)
    try:
        from improved_diffusion import script_util
        from improved_diffusion.resample import UniformSampler
        from improved_diffusion.unet import AttentionBlock
    except ImportError as e:
        sys.exit(f"--peer {args.peer}: cannot import the official code ({e})")

    flags = script_util.model_and_diffusion_defaults()
    flags.update(PRESETS[args.preset])
    model, diffusion = script_util.create_model_and_diffusion(**flags)
    device = torch.device(args.device)
    model.to(device).train()
    if args.method == "attention":
        model.requires_grad_(False)
        for m in model.modules():
            if isinstance(m, AttentionBlock):
                m.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4, weight_decay=0.0)
    sampler = UniformSampler(diffusion)
    s = flags["image_size"]
    torch.manual_seed(0)
    x = torch.randn(args.batch_size, 3, s, s, device=device).clamp(-1, 1)

    def step():
        t, weights = sampler.sample(args.batch_size, device)
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            losses = diffusion.training_losses(model, x, t)
            loss = (losses["loss"] * weights).mean()
        loss.backward()
        opt.step()
        return float(loss.detach())

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    print(json.dumps(dict(impl="improved-diffusion", preset=args.preset, method=args.method, precision=args.precision,
                          batch_size=args.batch_size, steps=args.steps, seconds=dt,
                          images_per_sec=args.batch_size * args.steps / dt,
                          trainable=sum(p.numel() for p in params))), flush=True)


if __name__ == "__main__":
    main()
