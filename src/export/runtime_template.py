"""A³FT's time-aware adapter for diffusers: `UNet2DModel` plus the adapter it was fine-tuned with.

Written by `a3ft export --format diffusers` (from src/export/runtime_template.py in a3ft).
Load the folder with remote code allowed, which runs this file:

    DiffusionPipeline.from_pretrained(DIR, trust_remote_code=True)
    AutoModel.from_pretrained(DIR, trust_remote_code=True)   # the UNet alone

Without it, `UNet2DModel.from_pretrained(DIR, subfolder="unet")` gives the plain network: the
fine-tuned weights without the adapter (diffusers then lists the unused `adapter.*` tensors).

In every attention block the adapter sits between the attention output `a` and `to_out.0`
(docs/design/adapter.md in a3ft):

    to_out.0((1 - alpha) * a + alpha * z_out)      instead of      to_out.0(a)

where `e` is the time embedding the ResNet blocks receive, and for a block of C channels
    tau     = fuse_out(SiLU(fuse_in(e)))                     time fusion, shared by width C
    z_query = query_norm(query(a + tau))                     per position
    z_out   = out_norm(out(softmax(z_query^T a / sqrt(L)) a)) attention between the C channels
    alpha   = sigmoid(gate(SiLU(hidden(e)))) [* out_scale]   one gate per block
Needs only torch and diffusers.
"""

import inspect
import math
import os
import re

import torch
import torch.nn.functional as F
from torch import nn

from diffusers import UNet2DModel
from diffusers.models.attention_processor import Attention

# Filled in by `a3ft export` from the run.
# Width of the time-scaling MLP's hidden layer.
TIME_SCALING_HIDDEN = @TIME_SCALING_HIDDEN@
# Whether each gate is multiplied by a per-channel scale (the run's `zero-scale` adapter start).
OUT_SCALE = @OUT_SCALE@


class AdapterShared(nn.Module):
    """Time fusion and channel-wise cross-attention; one per channel width, shared by its blocks."""

    def __init__(self, emb_dim, channels):
        super().__init__()
        self.fuse_in = nn.Linear(emb_dim, channels)
        self.fuse_out = nn.Linear(channels, channels)
        self.query = nn.Linear(channels, channels)
        self.query_norm = nn.LayerNorm(channels, eps=1e-5)
        self.out = nn.Linear(channels, channels)
        self.out_norm = nn.LayerNorm(channels, eps=1e-5)

    def mix(self, a, emb, scaling):
        """`(1 - alpha) * a + alpha * z_out` for the attention output `a` [N, L, C] (positions
        first, as diffusers' `to_out.0` reads it) and the time embedding `emb` [N, D]."""
        dtype = a.dtype
        tau = self.fuse_out(F.silu(self.fuse_in(emb.to(dtype))))  # [N, C]
        z_query = self.query_norm(self.query(a + tau.unsqueeze(1)))  # [N, L, C]
        # Tokens are the C channels, features the L positions: a C x C attention map. The
        # softmax runs in float32 whatever the weights' dtype, as in a3ft.
        logits = z_query.transpose(1, 2) @ a  # [N, C, C]
        w = torch.softmax(logits.float() * (1.0 / math.sqrt(a.shape[1])), dim=-1).to(dtype)
        o = a @ w.transpose(1, 2)  # [N, L, C]: (w @ a^T)^T
        z_out = self.out_norm(self.out(o))
        alpha = scaling(emb).to(dtype).unsqueeze(1)  # [N, 1, C]
        return a * (1 - alpha) + z_out * alpha


class TimeScaling(nn.Module):
    """The gate alpha of one attention block, computed in float32."""

    def __init__(self, emb_dim, channels):
        super().__init__()
        self.hidden = nn.Linear(emb_dim, TIME_SCALING_HIDDEN)
        self.gate = nn.Linear(TIME_SCALING_HIDDEN, channels)
        self.out_scale = nn.Parameter(torch.zeros(channels)) if OUT_SCALE else None

    def forward(self, emb):
        # float32 weights too, so that a half-precision model gates as a3ft does.
        h = F.silu(F.linear(emb.float(), self.hidden.weight.float(), self.hidden.bias.float()))
        alpha = torch.sigmoid(F.linear(h, self.gate.weight.float(), self.gate.bias.float()))
        return alpha if self.out_scale is None else alpha * self.out_scale.float()


def _child(parent, dotted):
    """The `nn.ModuleDict` at `dotted` under `parent`, made on the way: a3ft names each gate after
    its attention block (`adapter.scale.down_blocks.1.attentions.0.gate.weight`)."""
    for part in dotted.split("."):
        if part not in parent:
            parent[part] = nn.ModuleDict()
        parent = parent[part]
    return parent


class A3FTUNet2DModel(UNet2DModel):
    """`UNet2DModel` whose attention blocks apply the A³FT adapter (tensors under `adapter.`).

    The adapter is applied by a pre-hook on each block's `to_out.0` rather than by an attention
    processor, so it stays in place whatever processor is set (`set_default_attn_processor`,
    xformers, fused projections); the time embedding reaches it through a hook on
    `time_embedding`, since diffusers' down and up blocks do not pass it to their attentions.
    """

    def __init__(self, *args, auto_map=None, **kwargs):
        super().__init__(*args, **kwargs)
        # Kept in the config (which names this file), so that saving the model keeps it too.
        self.register_to_config(auto_map=auto_map)
        emb_dim = self.time_embedding.linear_2.out_features
        self.adapter = nn.Module()
        self.adapter.shared = nn.ModuleDict()
        self.adapter.scale = nn.ModuleDict()
        self._a3ft_emb = None
        for name, block in list(self.named_modules()):
            if not isinstance(block, Attention):
                continue
            channels = block.to_out[0].in_features
            key = f"c{channels}"
            if key not in self.adapter.shared:
                self.adapter.shared[key] = AdapterShared(emb_dim, channels)
            parent, _, last = name.rpartition(".")
            scaling = TimeScaling(emb_dim, channels)
            _child(self.adapter.scale, parent)[last] = scaling
            block.to_out[0].register_forward_pre_hook(self._hook(self.adapter.shared[key], scaling))
        self.time_embedding.register_forward_hook(self._keep_emb)

    # diffusers reads a model's config keys from its __init__ signature: this one takes
    # UNet2DModel's, and the `auto_map` entry that points here.
    _base = inspect.signature(UNet2DModel.__init__)
    __init__.__signature__ = _base.replace(parameters=[*_base.parameters.values(), inspect.Parameter("auto_map", inspect.Parameter.KEYWORD_ONLY, default=None)])
    del _base

    def save_pretrained(self, save_directory, *args, **kwargs):
        """diffusers' own, plus this file beside the config that names it: diffusers (unlike
        transformers) does not copy a model's remote code, and without it the saved folder, or a
        pipeline saved with this UNet, would not load."""
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True) and not os.path.isfile(save_directory):
            target = os.path.join(save_directory, _FILE_NAME)
            with open(target + ".tmp", "w", encoding="utf-8") as f:
                f.write(_SOURCE)
            os.replace(target + ".tmp", target)

    def _keep_emb(self, module, inputs, output):
        self._a3ft_emb = output

    def _hook(self, shared, scaling):
        def apply_adapter(linear, inputs):
            if self._a3ft_emb is None:
                raise RuntimeError("the A³FT adapter runs inside A3FTUNet2DModel.forward only (it needs the time embedding)")
            (a,) = inputs
            return (shared.mix(a, self._a3ft_emb, scaling),)

        return apply_adapter

    def forward(self, *args, **kwargs):
        try:
            return super().forward(*args, **kwargs)
        finally:
            # A stale embedding must never reach a later call's attention blocks.
            self._a3ft_emb = None


# The name this file is saved and loaded under (`auto_map`, model_index.json). diffusers loads it
# as `diffusers_modules.local.a3ft_unet`, and a pipeline's save_pretrained writes a custom
# component's `__module__` into model_index.json as the library to import it from: the short
# name is what a saved folder can load again, as the folder the export wrote does.
_FILE_NAME = "a3ft_unet.py"
A3FTUNet2DModel.__module__ = _FILE_NAME[: -len(".py")]

# This file as it was run, for save_pretrained: diffusers loads every export's `a3ft_unet.py`
# through one cached path, which another export's load (in this process or another) may have
# rewritten since, so the constants are written back as they were executed.
with open(__file__, encoding="utf-8") as _f:
    _SOURCE = _f.read()
for _name in ["TIME_SCALING_HIDDEN", "OUT_SCALE"]:
    _SOURCE = re.sub(rf"^{_name} = .*$", f"{_name} = {globals()[_name]}", _SOURCE, count=1, flags=re.M)
