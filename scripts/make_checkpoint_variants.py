"""Writes the checkpoint-file variants used by tests/checkpoints.rs.

Run from the repository root after `make build`:
    .venv/bin/python scripts/make_checkpoint_variants.py
Uses only torch's own serialisation (no official repository code). The tensors are random
and identical in every variant, so a loader must give bit-identical f32 values for all
variants except bf16 (which rounds).
"""
import collections, io, json, os, subprocess, zipfile
import torch

root = "tests/fixtures/variants"
cfg = os.path.join(root, "config.json")
info = json.loads(subprocess.check_output(["target/release/a3ft", "inspect", "--model-config", cfg, "--json", "--keys"]))
keys = sorted(info["keys"].items())
g = torch.Generator().manual_seed(0)
ref = collections.OrderedDict((k, torch.randn(*shape, generator=g) * 0.2) for k, shape in keys)

def save(obj, name, **kw):
    torch.save(obj, os.path.join(root, name), **kw)

# Plain tensors (reference), also as safetensors-equivalent via torch: keep .pt only.
save(ref, "plain.pt")
# nn.Parameter entries (how the non-fp16 training loop saves).
save(collections.OrderedDict((k, torch.nn.Parameter(v.clone())) for k, v in ref.items()), "parameters.pt")
# All entries are views into one flat storage with offsets (fp16 master-weight saving).
flat = torch.cat([v.reshape(-1) for v in ref.values()])
views, off = collections.OrderedDict(), 0
for k, v in ref.items():
    views[k] = flat[off: off + v.numel()].view(v.shape)
    off += v.numel()
save(views, "shared_storage.pt")
# Legacy (pre-1.6, non-zip) format.
save(ref, "legacy.pt", _use_new_zipfile_serialization=False)
# Saved through a file object: archive prefix "archive".
buf = io.BytesIO()
torch.save(ref, buf)
open(os.path.join(root, "file_object.pt"), "wb").write(buf.getvalue())
# bf16 weights (upcast on load).
save(collections.OrderedDict((k, v.to(torch.bfloat16)) for k, v in ref.items()), "bf16.pt")
# Nested under a key, as training checkpoints often are.
save({"state_dict": ref, "step": 10}, "nested.pt")
# Broken files.
data = open(os.path.join(root, "plain.pt"), "rb").read()
open(os.path.join(root, "truncated.pt"), "wb").write(data[: len(data) // 2])
open(os.path.join(root, "garbage.pt"), "wb").write(bytes(range(256)) * 8)
open(os.path.join(root, "empty.pt"), "wb").write(b"")
# Pickle that asks to execute code: must be refused, never run.
class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/a3ft-pwned",))
save({"x": Evil()}, "malicious.pt")
# A state_dict with one key missing, one unexpected and one wrong shape.
bad = collections.OrderedDict(ref)
bad.pop("out.2.bias")
bad["extra.weight"] = torch.zeros(3)
bad["time_embed.0.weight"] = torch.zeros(5, 5)
save(bad, "mismatched.pt")
# A decompression bomb: torch.save stores tensors uncompressed, this file deflates 64 MiB of
# zeros into a few kilobytes. A loader must refuse it before inflating.
buf = io.BytesIO()
torch.save({"w": torch.zeros(2 ** 24)}, buf)
src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
with zipfile.ZipFile(os.path.join(root, "bomb.pt"), "w", zipfile.ZIP_DEFLATED, compresslevel=9) as dst:
    for info in src.infolist():
        dst.writestr(info.filename, src.read(info.filename))
print("wrote", len(ref), "tensors per variant to", root)
