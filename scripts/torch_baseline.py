"""Plain PyTorch eager implementation of the same UNet, hybrid loss, Adam step and DDIM
sampler that a3ft runs, written from the project's reference notes on the official code
(improved-diffusion layout, legacy QKV order, einsum attention as the official code computes it;
not the official code itself). It is the baseline of `make bench` and scripts/gpu-bench.sh: same model, same
batch, same method, same device, timed the same way.

    python scripts/torch_baseline.py train --preset imagenet64 --method full --batch-size 8 \
        --steps 5 --warmup 2 --precision fp32 --device cpu
    python scripts/torch_baseline.py sample --preset imagenet64 --batch-size 8 --respacing ddim50

Prints one JSON object per run, with the same fields as `a3ft bench --json`.
"""
import argparse, json, math, os, resource, sys, time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

PRESETS = {
    "imagenet64": dict(image_size=64, num_channels=128, channel_mult=(1, 2, 3, 4), num_res_blocks=3,
                       attention_ds=(4, 8), num_heads=4, learn_sigma=True, diffusion_steps=4000,
                       noise_schedule="cosine", rescale_timesteps=True),
    # assets/demo-model.json
    "demo32": dict(image_size=32, num_channels=32, channel_mult=(1, 2, 2), num_res_blocks=2,
                   attention_ds=(2, 4), num_heads=4, learn_sigma=True, diffusion_steps=1000,
                   noise_schedule="cosine", rescale_timesteps=True),
}


# --sdpa: attention through F.scaled_dot_product_attention instead of the official einsums.
USE_SDPA = False


class GroupNorm32(nn.GroupNorm):
    def forward(self, x):
        return super().forward(x.float()).type(x.dtype)


def timestep_embedding(t, dim):
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ResBlock(nn.Module):
    def __init__(self, cin, cout, emb):
        super().__init__()
        self.cout = cout
        self.in_layers = nn.Sequential(GroupNorm32(32, cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb, 2 * cout))
        self.out_layers = nn.Sequential(GroupNorm32(32, cout), nn.SiLU(), nn.Dropout(0.0), nn.Conv2d(cout, cout, 3, padding=1))
        self.skip_connection = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, x, emb, adapters=None):
        h = self.in_layers(x)
        e = self.emb_layers(emb).type(h.dtype)[..., None, None]
        scale, shift = e.chunk(2, dim=1)
        h = self.out_layers[0](h) * (1 + scale) + shift
        h = self.out_layers[3](self.out_layers[1](h))
        return self.skip_connection(x) + h


class Adapter(nn.Module):
    """Time fusion + channel-wise cross-attention, shared per width (design/adapter.md)."""

    def __init__(self, emb, c):
        super().__init__()
        self.fuse_in, self.fuse_out = nn.Linear(emb, c), nn.Linear(c, c)
        self.query, self.query_norm = nn.Linear(c, c), nn.LayerNorm(c)
        self.out, self.out_norm = nn.Linear(c, c), nn.LayerNorm(c)

    def forward(self, a, emb, scaling):
        tau = self.fuse_out(F.silu(self.fuse_in(emb)))
        at = a.transpose(1, 2)
        zq = self.query_norm(self.query(at + tau[:, None, :]))  # [N, L, C]
        L = a.shape[-1]
        w = torch.softmax(torch.einsum("nlc,nld->ncd", zq, at).float() / math.sqrt(L), dim=-1).type(a.dtype)
        o = torch.einsum("ncd,ndl->ncl", w, a)
        z = self.out_norm(self.out(o.transpose(1, 2))).transpose(1, 2)
        alpha = scaling(emb)[..., None].type(a.dtype)
        return (1 - alpha) * a + alpha * z


class TimeScaling(nn.Module):
    def __init__(self, emb, c):
        super().__init__()
        self.hidden, self.gate = nn.Linear(emb, 32), nn.Linear(32, c)

    def forward(self, emb):
        return torch.sigmoid(self.gate(F.silu(self.hidden(emb.float()))))


class AttentionBlock(nn.Module):
    def __init__(self, c, heads):
        super().__init__()
        self.heads = heads
        self.norm = GroupNorm32(32, c)
        self.qkv = nn.Conv1d(c, 3 * c, 1)
        self.proj_out = nn.Conv1d(c, c, 1)
        self.adapter = None

    def forward(self, x, emb, adapters=None):
        b, c, *sp = x.shape
        x3 = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(x3))
        bs, width, length = qkv.shape
        ch = width // (3 * self.heads)
        if USE_SDPA:
            # Fused kernels need the head dimension contiguous.
            q, k, v = qkv.reshape(bs, self.heads, 3, ch, length).permute(2, 0, 1, 4, 3).contiguous().unbind(0)
            a = F.scaled_dot_product_attention(q, k, v).transpose(2, 3).reshape(bs, -1, length)
        else:
            q, k, v = qkv.reshape(bs * self.heads, ch * 3, length).split(ch, dim=1)
            scale = 1 / math.sqrt(math.sqrt(ch))
            w = torch.einsum("bct,bcs->bts", q * scale, k * scale)
            w = torch.softmax(w.float(), dim=-1).type(w.dtype)
            a = torch.einsum("bts,bcs->bct", w, v).reshape(bs, -1, length)
        if self.adapter is not None:
            shared, scaling = self.adapter
            a = shared(a, emb, scaling)
        return (x3 + self.proj_out(a)).reshape(b, c, *sp)


class Down(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.op = nn.Conv2d(c, c, 3, stride=2, padding=1)

    def forward(self, x, emb):
        return self.op(x)


class Up(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x, emb):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Seq(nn.ModuleList):
    def forward(self, x, emb):
        for layer in self:
            x = layer(x, emb) if not isinstance(layer, nn.Conv2d) else layer(x)
        return x


class UNet(nn.Module):
    def __init__(self, cfg, adapters=False):
        super().__init__()
        mc, emb = cfg["num_channels"], 4 * cfg["num_channels"]
        self.mc = mc
        self.time_embed = nn.Sequential(nn.Linear(mc, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.input_blocks = nn.ModuleList([Seq([nn.Conv2d(3, mc, 3, padding=1)])])
        chans, ch, ds = [mc], mc, 1
        attn = []
        for level, mult in enumerate(cfg["channel_mult"]):
            for _ in range(cfg["num_res_blocks"]):
                layers = [ResBlock(ch, mult * mc, emb)]
                ch = mult * mc
                if ds in cfg["attention_ds"]:
                    layers.append(AttentionBlock(ch, cfg["num_heads"]))
                    attn.append(layers[-1])
                self.input_blocks.append(Seq(layers))
                chans.append(ch)
            if level != len(cfg["channel_mult"]) - 1:
                self.input_blocks.append(Seq([Down(ch)]))
                chans.append(ch)
                ds *= 2
        self.middle_block = Seq([ResBlock(ch, ch, emb), AttentionBlock(ch, cfg["num_heads"]), ResBlock(ch, ch, emb)])
        attn.append(self.middle_block[1])
        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(cfg["channel_mult"]))[::-1]:
            for i in range(cfg["num_res_blocks"] + 1):
                layers = [ResBlock(ch + chans.pop(), mc * mult, emb)]
                ch = mc * mult
                if ds in cfg["attention_ds"]:
                    layers.append(AttentionBlock(ch, cfg["num_heads"]))
                    attn.append(layers[-1])
                if level and i == cfg["num_res_blocks"]:
                    layers.append(Up(ch))
                    ds //= 2
                self.output_blocks.append(Seq(layers))
        self.out = nn.Sequential(GroupNorm32(32, ch), nn.SiLU(), nn.Conv2d(ch, 6 if cfg["learn_sigma"] else 3, 3, padding=1))
        self.attention_blocks = attn
        if adapters:
            self.adapter_shared = nn.ModuleDict()
            self.adapter_scale = nn.ModuleList()
            for blk in attn:
                c = blk.proj_out.out_channels
                if str(c) not in self.adapter_shared:
                    self.adapter_shared[str(c)] = Adapter(emb, c)
                scaling = TimeScaling(emb, c)
                self.adapter_scale.append(scaling)
                blk.adapter = (self.adapter_shared[str(c)], scaling)

    def forward(self, x, t):
        emb = self.time_embed(timestep_embedding(t, self.mc))
        hs, h = [], x
        for m in self.input_blocks:
            h = m(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for m in self.output_blocks:
            h = m(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h).float()


def betas_for(cfg, T):
    if cfg["noise_schedule"] == "linear":
        s = 1000 / T
        return np.linspace(s * 1e-4, s * 0.02, T, dtype=np.float64)
    f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    return np.array([min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)])


class Diffusion:
    def __init__(self, betas, device, timestep_map=None, original=None, rescale=True):
        self.T = len(betas)
        ac = np.cumprod(1 - betas)
        acp = np.append(1.0, ac[:-1])
        pv = betas * (1 - acp) / (1 - ac)
        arrs = dict(
            sqrt_ac=np.sqrt(ac), sqrt_1mac=np.sqrt(1 - ac), ac=ac, acp=acp,
            sqrt_recip=np.sqrt(1 / ac), sqrt_recipm1=np.sqrt(1 / ac - 1),
            plv=np.log(np.append(pv[1], pv[1:])), logb=np.log(betas),
            c1=betas * np.sqrt(acp) / (1 - ac), c2=(1 - acp) * np.sqrt(1 - betas) / (1 - ac),
        )
        self.a = {k: torch.tensor(v, device=device) for k, v in arrs.items()}
        self.map = torch.tensor(timestep_map if timestep_map is not None else np.arange(self.T), device=device)
        self.scale = 1000.0 / (original or self.T) if rescale else 1.0

    def ex(self, k, t):
        return self.a[k][t].float()[:, None, None, None]

    def model_t(self, t):
        return self.map[t].float() * self.scale

    def mean_var(self, out, x, t, clip):
        eps, v = out[:, :3], out[:, 3:]
        frac = (v + 1) / 2
        lv = frac * self.ex("logb", t) + (1 - frac) * self.ex("plv", t)
        x0 = self.ex("sqrt_recip", t) * x - self.ex("sqrt_recipm1", t) * eps
        if clip:
            x0 = x0.clamp(-1, 1)
        return self.ex("c1", t) * x0 + self.ex("c2", t) * x, lv, x0

    def loss(self, model, x0, t, noise):
        x_t = self.ex("sqrt_ac", t) * x0 + self.ex("sqrt_1mac", t) * noise
        out = model(x_t, self.model_t(t))
        mse = ((noise - out[:, :3]) ** 2).mean(dim=(1, 2, 3))
        frozen = torch.cat([out[:, :3].detach(), out[:, 3:]], dim=1)
        mean, lv, _ = self.mean_var(frozen, x_t, t, False)
        tm = self.ex("c1", t) * x0 + self.ex("c2", t) * x_t
        tlv = self.ex("plv", t)
        kl = 0.5 * (-1.0 + lv - tlv + torch.exp(tlv - lv) + (tm - mean) ** 2 * torch.exp(-lv))
        kl = kl.mean(dim=(1, 2, 3)) / math.log(2.0)
        c = x0 - mean
        inv = torch.exp(-0.5 * lv)
        cdf = lambda z: 0.5 * (1 + torch.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z ** 3)))
        cp, cm = cdf(inv * (c + 1 / 255)), cdf(inv * (c - 1 / 255))
        lp = torch.where(x0 < -0.999, cp.clamp(min=1e-12).log(),
                         torch.where(x0 > 0.999, (1 - cm).clamp(min=1e-12).log(), (cp - cm).clamp(min=1e-12).log()))
        nll = -lp.mean(dim=(1, 2, 3)) / math.log(2.0)
        vb = torch.where(t == 0, nll, kl) * (self.T / 1000.0)
        return (mse + vb).mean()


def set_method(model, method):
    for name, p in model.named_parameters():
        if method == "full":
            p.requires_grad_(True)
        else:
            in_attn = any(p is q for b in model.attention_blocks for q in
                          list(b.norm.parameters()) + list(b.qkv.parameters()) + list(b.proj_out.parameters()))
            is_adapter = name.startswith("adapter_")
            p.requires_grad_(in_attn or (method == "a3ft" and is_adapter))
    return [p for p in model.parameters() if p.requires_grad]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def bench_train(args, device):
    cfg = PRESETS[args.preset]
    torch.manual_seed(0)
    model = UNet(cfg, adapters=args.method == "a3ft").to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    params = set_method(model, args.method)
    opt = torch.optim.Adam(params, lr=2e-4, betas=(0.9, 0.999), eps=1e-8)
    diff = Diffusion(betas_for(dict(cfg, noise_schedule="cosine"), 1000), device)
    # --compile: the step's model under torch.compile (what a performance-minded user runs);
    # the warm-up steps include compilation and are reported apart as compile_seconds.
    run_model = model if args.compile is None else torch.compile(model, mode=None if args.compile == "default" else args.compile)
    s = cfg["image_size"]
    data = torch.rand(args.batch_size, 3, s, s, device=device) * 2 - 1
    if args.channels_last:
        data = data.contiguous(memory_format=torch.channels_last)
    amp = args.precision == "bf16"

    def step():
        t = torch.randint(0, diff.T, (args.batch_size,), device=device)
        noise = torch.randn_like(data)
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = diff.loss(run_model, data, t, noise)
        loss.backward()
        opt.step()
        return loss

    if args.count_flops:
        # FLOPs of one training step (forward + backward, the optimizer excluded) per image, from
        # PyTorch's analytic counter; MFU = images/s × this / the card's peak.
        from torch.utils.flop_counter import FlopCounterMode
        counter = FlopCounterMode(display=False)
        with counter:
            step()
        print(json.dumps(dict(preset=args.preset, method=args.method, flops_per_image=counter.get_total_flops() / args.batch_size)), flush=True)
        return
    warm_start = time.perf_counter()
    for _ in range(args.warmup):
        step()
    sync(device)
    compile_seconds = time.perf_counter() - warm_start
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    sync(device)
    secs = time.perf_counter() - start
    assert math.isfinite(loss.item())
    impl = ("pytorch-sdpa" if USE_SDPA else "pytorch") + (f"-compile-{args.compile}" if args.compile else "")
    out = dict(impl=impl, method=args.method, precision=args.precision, batch_size=args.batch_size,
               steps=args.steps, seconds_per_step=secs / args.steps,
               images_per_sec=args.steps * args.batch_size / secs,
               trainable_params=sum(p.numel() for p in params))
    if args.compile:
        out["compile_seconds"] = compile_seconds
    if device.type == "cuda":
        out["peak_cuda_allocated_bytes"] = torch.cuda.max_memory_allocated()
    else:
        out["peak_rss_bytes"] = peak_rss()
    print(json.dumps(out), flush=True)


def bench_sample(args, device):
    cfg = PRESETS[args.preset]
    torch.manual_seed(0)
    model = UNet(cfg).to(device).eval()
    T = cfg["diffusion_steps"]
    n = int(args.respacing[4:])
    stride = next(i for i in range(1, T) if len(range(0, T, i)) == n)
    keep = list(range(0, T, stride))
    base = betas_for(cfg, T)
    ac = np.cumprod(1 - base)
    betas, last = [], 1.0
    for i in keep:
        betas.append(1 - ac[i] / last)
        last = ac[i]
    diff = Diffusion(np.array(betas), device, keep, T, cfg["rescale_timesteps"])
    s = cfg["image_size"]
    amp = args.precision == "bf16"
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        model(torch.randn(args.batch_size, 3, s, s, device=device), torch.zeros(args.batch_size, device=device))
        sync(device)
        start = time.perf_counter()
        x = torch.randn(args.batch_size, 3, s, s, device=device)
        for i in reversed(range(diff.T)):
            t = torch.full((args.batch_size,), i, device=device, dtype=torch.long)
            out = model(x, diff.model_t(t))
            _, _, x0 = diff.mean_var(out, x, t, True)
            eps = (diff.ex("sqrt_recip", t) * x - x0) / diff.ex("sqrt_recipm1", t)
            x = x0 * diff.ex("acp", t).sqrt() + (1 - diff.ex("acp", t)).sqrt() * eps
        x.float().mean().item()
        secs = time.perf_counter() - start
    print(json.dumps(dict(impl="pytorch-sdpa" if USE_SDPA else "pytorch", respacing=args.respacing, precision=args.precision,
                          batch_size=args.batch_size, seconds=secs, images_per_sec=args.batch_size / secs)), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["train", "sample"])
    ap.add_argument("--preset", default="imagenet64")
    ap.add_argument("--method", default="full", choices=["full", "attention", "a3ft"])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--respacing", default="ddim50")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--sdpa", action="store_true", help="fused scaled_dot_product_attention instead of einsum")
    ap.add_argument("--compile", choices=["default", "max-autotune-no-cudagraphs"], help="train under torch.compile with this mode")
    ap.add_argument("--count-flops", action="store_true", help="print FLOPs per image of one training step instead of timing")
    args = ap.parse_args()
    global USE_SDPA
    USE_SDPA = args.sdpa
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    (bench_train if args.what == "train" else bench_sample)(args, device)


if __name__ == "__main__":
    main()
