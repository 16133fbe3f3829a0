"""Golden outputs of the official guided-diffusion code for configurations the shared fixtures
do not cover (resblock_updown, new attention order, num_head_channels, fixed variances,
predict_xstart, KL loss). The official repository is only imported from a checkout given on the
command line; nothing from it is copied into a3ft.

    .venv/bin/python scripts/make_extra_goldens.py /path/to/guided-diffusion

Writes tests/fixtures/<name>/{config.json, model.pt, x0.npy, t.npy, noise.npy, expected.npz}
with the same meaning as the shared fixtures (model_output = network at the raw t; these
configurations do not rescale timesteps, so raw and scaled agree).
"""
import json, os, sys
import numpy as np
import torch

sys.path.insert(0, sys.argv[1])
from guided_diffusion import script_util  # noqa: E402

CONFIGS = {
    "adm-updown": dict(image_size=16, num_channels=32, channel_mult="1,2", num_res_blocks=1,
                       attention_resolutions="16,8", num_heads=4, num_head_channels=16, num_heads_upsample=-1,
                       learn_sigma=True, use_scale_shift_norm=True, resblock_updown=True,
                       use_new_attention_order=True, dropout=0.0, diffusion_steps=1000, noise_schedule="linear",
                       rescale_timesteps=False, rescale_learned_sigmas=False),
    "adm-fixed-xstart": dict(image_size=16, num_channels=32, channel_mult="1,2", num_res_blocks=1,
                             attention_resolutions="8", num_heads=2, num_head_channels=-1, num_heads_upsample=-1,
                             learn_sigma=False, sigma_small=False, predict_xstart=True, use_scale_shift_norm=False,
                             resblock_updown=False, use_new_attention_order=False, dropout=0.0, diffusion_steps=500,
                             noise_schedule="cosine", rescale_timesteps=False, rescale_learned_sigmas=False),
    "adm-kl-small": dict(image_size=16, num_channels=32, channel_mult="1,2", num_res_blocks=1,
                         attention_resolutions="8", num_heads=1, num_head_channels=-1, num_heads_upsample=-1,
                         learn_sigma=True, use_kl=True, use_scale_shift_norm=True, resblock_updown=False,
                         use_new_attention_order=True, dropout=0.0, diffusion_steps=200, noise_schedule="cosine",
                         rescale_timesteps=False, rescale_learned_sigmas=False),
    "adm-sigma-small": dict(image_size=16, num_channels=32, channel_mult="1,2", num_res_blocks=1,
                            attention_resolutions="8", num_heads=1, num_head_channels=-1, num_heads_upsample=-1,
                            learn_sigma=False, sigma_small=True, use_scale_shift_norm=True, resblock_updown=True,
                            use_new_attention_order=False, dropout=0.0, diffusion_steps=1000, noise_schedule="linear",
                            rescale_timesteps=False, rescale_learned_sigmas=False),
}

torch.manual_seed(0)
for name, flags in CONFIGS.items():
    args = script_util.model_and_diffusion_defaults()
    args.update(flags)
    model, diffusion = script_util.create_model_and_diffusion(**{k: args[k] for k in script_util.model_and_diffusion_defaults()})
    if flags.get("sigma_small"):
        # create_model_and_diffusion has no sigma_small flag; build the diffusion directly.
        diffusion = script_util.create_gaussian_diffusion(
            steps=args["diffusion_steps"], learn_sigma=args["learn_sigma"], sigma_small=True,
            noise_schedule=args["noise_schedule"], use_kl=args["use_kl"], predict_xstart=args["predict_xstart"],
            rescale_timesteps=args["rescale_timesteps"], rescale_learned_sigmas=args["rescale_learned_sigmas"],
            timestep_respacing="")
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if ".norm." in pname or "in_layers.0" in pname or "out_layers.0" in pname or pname.startswith("out.0"):
                p.copy_(1 + 0.1 * torch.randn_like(p) if pname.endswith("weight") else 0.1 * torch.randn_like(p))
            else:
                fan_in = p[0].numel() if p.dim() > 1 else p.numel()
                p.copy_(torch.randn_like(p) / fan_in ** 0.5)
    model.eval()
    out_dir = f"tests/fixtures/{name}"
    os.makedirs(out_dir, exist_ok=True)
    cfg = {k: flags[k] for k in flags}
    json.dump(cfg, open(f"{out_dir}/config.json", "w"), indent=2)
    torch.save(model.state_dict(), f"{out_dir}/model.pt")
    B, S = 4, flags["image_size"]
    T = flags["diffusion_steps"]
    x0 = (torch.rand(B, 3, S, S) * 2 - 1)
    x0[0] = torch.round((x0[0] + 1) * 127.5) / 127.5 - 1
    t = torch.tensor([0, 1, T // 2, T - 1])
    noise = torch.randn(B, 3, S, S)
    np.save(f"{out_dir}/x0.npy", x0.numpy()); np.save(f"{out_dir}/t.npy", t.numpy()); np.save(f"{out_dir}/noise.npy", noise.numpy())
    with torch.no_grad():
        x_t = diffusion.q_sample(x0, t, noise=noise)
        mo = model(x_t, t)
        losses = diffusion.training_losses(model, x0, t, noise=noise)
        pm = diffusion.p_mean_variance(model, x_t, t, clip_denoised=False)
        pmc = diffusion.p_mean_variance(model, x_t, t, clip_denoised=True)
    exp = dict(x_t=x_t, model_output=mo, loss=losses["loss"], mean=pm["mean"],
               log_variance=pm["log_variance"].expand_as(x_t) if pm["log_variance"].shape != x_t.shape else pm["log_variance"],
               pred_xstart=pm["pred_xstart"], mean_clipped=pmc["mean"], pred_xstart_clipped=pmc["pred_xstart"])
    for k in ["mse", "vb"]:
        if k in losses:
            exp[k] = losses[k]
    np.savez(f"{out_dir}/expected.npz", **{k: v.float().numpy() for k, v in exp.items()})
    print(name, sorted(exp), sum(p.numel() for p in model.parameters()))
