"""Golden values for the evaluation tests (tests/eval.rs), from Pillow, NumPy/SciPy and the
clean-fid package itself (0.1.35, mode "clean"), with the same Inception file a3ft uses.

    .venv/bin/pip install pillow scipy clean-fid torchvision==0.26.0
    .venv/bin/python scripts/make_eval_goldens.py      # after `make build inception`

Writes tests/fixtures/eval/{resize.npz, features.npz, expected.json, folder_a/, folder_b/}.
"""
import json, os, subprocess
import numpy as np
import torch
from PIL import Image
from scipy import linalg
from cleanfid import fid as cfid

root = "tests/fixtures/eval"
os.makedirs(root, exist_ok=True)
rng = np.random.default_rng(0)

# 1. Pillow BICUBIC on 'F' planes, up- and down-scaling, as clean-fid resizes.
cases = {}
for name, (h, w) in {"up": (32, 32), "down": (317, 451), "mixed": (150, 640)}.items():
    plane = rng.integers(0, 256, (h, w)).astype(np.uint8)
    out = np.asarray(Image.fromarray(plane.astype(np.float32), mode="F").resize((299, 299), resample=Image.BICUBIC))
    cases[f"{name}_in"] = plane
    cases[f"{name}_out"] = out.astype(np.float32)
np.savez_compressed(f"{root}/resize.npz", **cases)

# 2. FID/KID on fixed features, computed as clean-fid does.
f1 = np.abs(rng.standard_normal((64, 2048))).astype(np.float32)
f2 = (np.abs(rng.standard_normal((64, 2048))) * 1.1 + 0.05).astype(np.float32)
np.savez(f"{root}/features.npz", f1=f1, f2=f2)
def stats(f):
    return np.mean(f, axis=0), np.cov(f, rowvar=False)
expected = {
    "features_fid": float(cfid.frechet_distance(*stats(f1), *stats(f2))),
    "features_kid": float(cfid.kernel_distance(f1, f2)),
}

# 3. Two small image folders through the full clean-fid pipeline.
subprocess.check_call(["target/release/a3ft", "data", "synth", "--domain", "target", "--num", "48", "--seed", "11",
                       "--out", f"{root}/folder_a"])
subprocess.check_call(["target/release/a3ft", "data", "synth", "--domain", "source", "--num", "48", "--seed", "12",
                       "--out", f"{root}/folder_b"])
net = torch.jit.load(os.path.expanduser("~/.cache/a3ft/inception/default_1.pt")).eval()
extractor = lambda x: net((x - 128) / 128)
feats = {}
for k in ["folder_a", "folder_b"]:
    feats[k] = cfid.get_folder_features(f"{root}/{k}", model=extractor, num_workers=0, batch_size=16,
                                        device=torch.device("cpu"), mode="clean", verbose=False)
expected["folders_fid"] = float(cfid.frechet_distance(*stats(feats["folder_a"]), *stats(feats["folder_b"])))
expected["folders_fid_custom_extractor_api"] = float(cfid.compute_fid(f"{root}/folder_a", f"{root}/folder_b",
    custom_feat_extractor=extractor, num_workers=0, batch_size=16, device=torch.device("cpu"), verbose=False))
expected["folders_kid"] = float(cfid.kernel_distance(feats["folder_a"], feats["folder_b"]))
expected["folder_a_feature_sum"] = float(feats["folder_a"].astype(np.float64).sum())
json.dump(expected, open(f"{root}/expected.json", "w"), indent=2)
print(json.dumps(expected, indent=2))
