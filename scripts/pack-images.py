#!/usr/bin/env python3
"""Packs image sets and samples small enough for the device tool's transfers (scripts/gpu-study64.sh).

  pack DIR OUT.npy.xz NAMES.txt          a folder of same-size RGB PNGs -> one xz'd uint8 NHWC array
                                         (emoji: flat colours on white compress ~3x better together
                                         than as separate PNGs) and the file names, in sorted order
  unpack IN.npy.xz NAMES.txt DIR [--limit N]
                                         back to PNGs with the same names and pixels
  fit SAMPLES_DIR BYTES OUT.tar.xz       every SAMPLES_DIR/RUN/final_samples.npz into one tar.xz of at
                                         most BYTES, keeping the first K samples of each run (the
                                         largest K that fits; K is printed)

Needs numpy and Pillow (both on the GPU machines).
"""
import io
import lzma
import os
import shutil
import subprocess
import sys
import tarfile

import numpy as np


def xz(data: bytes) -> bytes:
    if shutil.which("xz"):
        return subprocess.run(["xz", "-T0", "-6", "-c"], input=data, stdout=subprocess.PIPE, check=True).stdout
    return lzma.compress(data, preset=6)


def pack(folder, out, names_out):
    from PIL import Image

    if os.path.abspath(out) == os.path.abspath(names_out):
        sys.exit("pack: the array and the names file must be two different files")
    if not os.path.isdir(folder):
        sys.exit(f"pack: {folder} is not a folder")
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(".png"))
    if not names:
        sys.exit(f"pack: no PNGs in {folder}")
    arr = np.stack([np.asarray(Image.open(os.path.join(folder, n)).convert("RGB")) for n in names])
    buf = io.BytesIO()
    np.save(buf, arr)
    with open(out, "wb") as f:
        f.write(xz(buf.getvalue()))
    with open(names_out, "w") as f:
        f.write("\n".join(names) + "\n")
    print(f"packed {len(names)} images {arr.shape[1:]} into {out} ({os.path.getsize(out)} bytes)")


def unpack(packed, names_file, folder, limit=None):
    from PIL import Image

    arr = np.load(io.BytesIO(lzma.decompress(open(packed, "rb").read())))
    names = open(names_file).read().splitlines()
    if len(names) != len(arr):
        sys.exit(f"unpack: {len(names)} names for {len(arr)} images")
    if any(os.path.basename(n) != n or n in ("", ".", "..") for n in names):
        sys.exit(f"unpack: {names_file} holds a name that is not a plain file name")
    if limit is not None and limit < 0:
        sys.exit("unpack: --limit must be at least 0")
    os.makedirs(folder, exist_ok=True)
    n = len(names) if limit is None else min(limit, len(names))
    for name, img in zip(names[:n], arr[:n]):
        Image.fromarray(img).save(os.path.join(folder, name), compress_level=1)
    print(f"unpacked {n} images into {folder}")


def fit(samples_dir, room, out):
    runs = {}
    for run in sorted(os.listdir(samples_dir)):
        path = os.path.join(samples_dir, run, "final_samples.npz")
        if os.path.isfile(path):
            runs[run] = np.load(path)["arr_0"]
    if not runs:
        sys.exit(f"fit: no final_samples.npz under {samples_dir}")
    k = max(len(a) for a in runs.values())
    while k >= 2:
        tar_buf = io.BytesIO()
        with tarfile.open(fileobj=tar_buf, mode="w") as tar:
            for run, a in runs.items():
                npz = io.BytesIO()
                np.savez(npz, arr_0=a[:k])
                info = tarfile.TarInfo(f"{run}/final_samples.npz")
                info.size = npz.tell()
                npz.seek(0)
                tar.addfile(info, npz)
        packed = xz(tar_buf.getvalue())
        if len(packed) <= room:
            with open(out, "wb") as f:
                f.write(packed)
            print(f"fit: {len(runs)} runs x {k} samples in {len(packed)} bytes (room {room})")
            return
        k = min(k - 1, int(k * room / len(packed) * 0.95))
    sys.exit(f"fit: not even two samples per run (the least clean-FID takes) fit in {room} bytes")


if __name__ == "__main__":
    a = sys.argv[1:]
    if a[:1] == ["pack"] and len(a) == 4:
        pack(*a[1:])
    elif a[:1] == ["unpack"] and (len(a) == 4 or (len(a) == 6 and a[4] == "--limit" and a[5].lstrip("-").isdigit())):
        unpack(a[1], a[2], a[3], int(a[5]) if len(a) == 6 else None)
    elif a[:1] == ["fit"] and len(a) == 4 and a[2].lstrip("-").isdigit():
        fit(a[1], int(a[2]), a[3])
    else:
        sys.exit(__doc__)
