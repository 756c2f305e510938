"""torchvision's side of `--data imagefolder:DIR`: a test tree of real images, the reference
tensors of ImageFolder + the ImageNet evaluation transform, and a small CNN's loss on them.

    python models/imagefolder_reference.py tree OUT [--photos DIR] [--fmnist N] [--copies K]
    python models/imagefolder_reference.py compare DIR PROBE_DUMP [--resize 256 --crop 224 ...]
    python models/imagefolder_reference.py eval DIR OUT.onnx OUT.json

`tree` writes an ImageNet-layout folder: Fashion-MNIST test images (Debian's
dataset-fashion-mnist) saved by PIL as JPEG and PNG at varied sizes and in every mode PIL's
`convert("RGB")` has to handle (L, RGB, CMYK, P, RGBA, LA, I;16, 1; 4:2:0, 4:2:2, 4:4:4 and
progressive JPEG), plus real photographs (the scikit-learn and scikit-image wheels' sample
images, unpacked by data/fetch.sh into data/cache/photos), a non-image file (not a sample) and a
nested folder (os.walk order). `compare` reads probe's dump of the same folder (see
tests/imagefolder.rs) and prints per-sample pixel differences as JSON. `eval` builds a seeded
CNN for 3x224x224 inputs, exports it as models/export.py does, and writes PyTorch's mean
cross-entropy and accuracy over the folder (OUT.json) and the mean loss's gradient per parameter
(OUT.json.grad.npz).
"""
import argparse
import gzip
import json
import os
import sys

import numpy as np
from PIL import Image

FMNIST = "/usr/share/datasets/fashion-mnist"
CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
           "bag", "ankle-boot"]


def fmnist(n):
    with gzip.open(os.path.join(FMNIST, "t10k-images-idx3-ubyte.gz")) as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)[:n]
    with gzip.open(os.path.join(FMNIST, "t10k-labels-idx1-ubyte.gz")) as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8)[:n]
    return x, y


def tinted(g, i):
    """A colour image from a grey one: each channel a different curve, so the chroma is not flat."""
    a = g.astype(np.float32) / 255
    rgb = np.stack([a, a ** (0.5 + 0.1 * (i % 5)), 1 - a * 0.7], -1)
    return Image.fromarray((rgb * 255).round().astype(np.uint8), "RGB")


def save_variant(g, i, folder):
    """Fashion-MNIST image `g` (28x28 uint8) written the i-th way; returns the file name."""
    L = Image.fromarray(g, "L")
    v = i % 15
    name = f"fm{i:03d}"
    up = lambda im, w, h: im.resize((w, h), Image.BICUBIC)  # noqa: E731
    if v == 0:
        L.save(os.path.join(folder, name + ".jpg"), quality=90)
    elif v == 1:
        up(tinted(g, i), 300, 200).save(os.path.join(folder, name + ".jpg"), quality=85)
    elif v == 2:
        L.save(os.path.join(folder, name + ".png"))
    elif v == 3:
        up(tinted(g, i), 240, 320).save(os.path.join(folder, name + ".png"))
    elif v == 4:
        up(tinted(g, i), 256, 180).convert("CMYK").save(os.path.join(folder, name + ".jpg"), quality=92)
    elif v == 5:
        up(tinted(g, i), 500, 260).convert("P", palette=Image.ADAPTIVE, colors=64).save(
            os.path.join(folder, name + ".png"))
    elif v == 6:
        im = up(tinted(g, i), 231, 231).convert("RGBA")
        im.putalpha(up(L, 231, 231))
        im.save(os.path.join(folder, name + ".png"))
    elif v == 7:
        im = up(L, 100, 57).convert("LA")
        im.putalpha(128)
        im.save(os.path.join(folder, name + ".PNG"))
    elif v == 8:
        up(tinted(g, i), 260, 390).save(os.path.join(folder, name + ".jpeg"), quality=95, subsampling=0)
    elif v == 9:
        up(tinted(g, i), 333, 250).save(os.path.join(folder, name + ".JPEG"), quality=80,
                                        subsampling=1, progressive=True)
    elif v == 10:
        a = np.asarray(up(L, 64, 80)).astype(np.uint16)
        # Mostly above 255 (PIL clips I;16 to 255 in convert("RGB")), some below.
        Image.fromarray(a * 3).save(os.path.join(folder, name + ".png"))
    elif v == 11:
        up(L, 50, 50).convert("1").save(os.path.join(folder, name + ".png"))
    elif v == 12:
        up(tinted(g, i), 256, 256).save(os.path.join(folder, name + ".jpg"), quality=75)
    elif v == 13:
        tinted(g, i).resize((10, 7)).save(os.path.join(folder, name + ".jpg"), quality=100)
    else:
        # More than twice as tall as wide, shrunk: Pillow 13 resizes it vertical pass first.
        up(tinted(g, i), 300, 700).save(os.path.join(folder, name + ".jpg"), quality=88)


def tree(args):
    x, y = fmnist(args.fmnist)
    for c in CLASSES:
        os.makedirs(os.path.join(args.out, c), exist_ok=True)
    for k in range(args.copies):
        for i in range(len(x)):
            save_variant(x[i], i + k * len(x), os.path.join(args.out, CLASSES[y[i]]))
    photos = sorted(os.listdir(args.photos)) if args.photos else []
    for k in range(args.copies):
        for j, p in enumerate(photos):
            folder = os.path.join(args.out, CLASSES[(j + k) % len(CLASSES)])
            if j % 7 == 3:  # a nested folder: ImageFolder walks it, sorted by path
                folder = os.path.join(folder, "more")
                os.makedirs(folder, exist_ok=True)
            name = f"photo-{p}" if k == 0 else f"photo{k}-{p}"
            with open(os.path.join(args.photos, p), "rb") as src, \
                    open(os.path.join(folder, name), "wb") as dst:
                dst.write(src.read())
    with open(os.path.join(args.out, CLASSES[0], "notes.txt"), "w") as f:
        f.write("not an image: ImageFolder skips it by its extension\n")
    print(json.dumps({"fmnist": len(x) * args.copies, "photos": len(photos) * args.copies}))


def transform(args):
    import torch
    from torchvision import transforms as T
    steps = []
    if args.resize != "none":
        r = args.resize
        size = int(r) if "x" not in r else tuple(int(v) for v in r.split("x"))
        if args.pillow == "12":
            steps.append(lambda im: pillow12_resize(im, size))
        else:
            steps.append(T.Resize(size))
    if args.crop != "none":
        c = args.crop
        steps.append(T.CenterCrop(int(c) if "x" not in c else tuple(int(v) for v in c.split("x"))))
    pixels = T.Compose(steps)
    mean = [float(v) for v in args.mean.split("/")]
    std = [float(v) for v in args.std.split("/")]
    tensor = T.Compose([T.ToTensor(), T.Normalize(mean, std)])
    return pixels, tensor, torch


def pillow12_resize(im, size):
    """T.Resize(size) as Pillow 12 and older compute it: the horizontal pass, then the vertical
    one (two resize calls, each skipping the pass whose size stays, give exactly that)."""
    from torchvision.transforms.functional import _compute_resized_output_size
    h, w = _compute_resized_output_size((im.height, im.width), [size] if isinstance(size, int) else list(size))
    return im.resize((w, im.height), Image.BILINEAR).resize((w, h), Image.BILINEAR)


def compare(args):
    """probe's dump: PROBE_DUMP.u8 (N crops, HWC uint8), .f32 (N, 3, H, W), .json (files, labels)."""
    from torchvision.datasets import ImageFolder
    pixels, tensor, torch = transform(args)
    ds = ImageFolder(args.dir)
    meta = json.load(open(args.dump + ".json"))
    files = [os.path.relpath(p, args.dir) for p, _ in ds.samples]
    assert files == meta["files"], f"order differs:\n{files}\n{meta['files']}"
    assert [c for _, c in ds.samples] == meta["labels"], "labels differ"
    u8 = np.fromfile(args.dump + ".u8", np.uint8)
    f32 = np.fromfile(args.dump + ".f32", np.float32)
    uo = fo = 0
    rows = []
    worst_u8 = worst_f32 = 0.0
    for i, (p, _) in enumerate(ds.samples):
        img = pixels(ds.loader(p))
        a = np.asarray(img, np.uint8)
        t = tensor(img).numpy()
        b = u8[uo:uo + a.size].reshape(a.shape)
        x = f32[fo:fo + t.size].reshape(t.shape)
        uo += a.size
        fo += t.size
        du = int(np.abs(a.astype(np.int32) - b.astype(np.int32)).max())
        df = float(np.abs(t - x).max())
        worst_u8, worst_f32 = max(worst_u8, du), max(worst_f32, df)
        rows.append({"file": files[i], "mode": Image.open(p).mode, "size": Image.open(p).size,
                     "u8_max": du, "u8_differing": int((a != b).sum()), "f32_max": df})
    assert uo == u8.size and fo == f32.size, "dump has more values than the folder's samples"
    print(json.dumps({"n": len(rows), "u8_max": worst_u8, "f32_max": worst_f32, "rows": rows}))


def build_cnn(seed=0):
    import torch
    import torch.nn as nn
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 7, stride=4, padding=3), nn.ReLU(),       # 224 -> 56
        nn.MaxPool2d(2),                                          # 56 -> 28
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),      # 28 -> 14
        nn.AvgPool2d(14), nn.Flatten(),                           # 16
        nn.Linear(16, 10),
    ).eval()


def build_resnet18(n_classes, seed=0):
    import torch
    import torchvision
    torch.manual_seed(seed)
    return torchvision.models.resnet18(num_classes=n_classes).eval()


def eval_(args):
    """PyTorch's full-data loss, accuracy and gradient of a model on the folder (float32, as
    researchers run it; with --f64 also in float64 on the same inputs, the reference the
    float32 results are held to). Writes the model as ONNX, the numbers as JSON to `out`, the
    gradients to `out`.grad.npz (and `out`.grad64.npz)."""
    import torch
    from torchvision.datasets import ImageFolder
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from export import export_onnx
    pixels, tensor, _ = transform(args)
    ds = ImageFolder(args.dir, transform=lambda im: tensor(pixels(im)))
    if args.arch == "resnet18":
        model = build_resnet18(len(ds.classes))
    else:
        model = build_cnn()
        with torch.no_grad():
            # Larger weights than the default init, so the loss is far from log(10) and a pixel
            # off anywhere would show.
            for p in model.parameters():
                p.mul_(4.0)
    loader = torch.utils.data.DataLoader(ds, batch_size=16, shuffle=False)

    def full(m, dtype):
        # The gradient of the mean loss over the folder: per-batch gradients of the summed
        # loss, added in float64, divided by N once (what probe grad computes).
        loss, correct, n = 0.0, 0, 0
        grads = {k: torch.zeros_like(p, dtype=torch.float64) for k, p in m.named_parameters()}
        for xb, yb in loader:
            logits = m(xb.to(dtype))
            s = torch.nn.functional.cross_entropy(logits, yb, reduction="sum")
            m.zero_grad()
            s.backward()
            for k, p in m.named_parameters():
                grads[k] += p.grad.double()
            loss += s.double().item()
            correct += int((logits.argmax(1) == yb).sum())
            n += len(yb)
        return loss / n, correct / n, n, {k: (g / n).numpy() for k, g in grads.items()}

    export_onnx(model, torch.randn(2, 3, 224, 224), args.onnx)
    loss, acc, n, grads = full(model, torch.float32)
    np.savez(args.out + ".grad.npz", **grads)
    r = {"loss": loss, "accuracy": acc, "n": n}
    if args.f64:
        import copy
        loss64, acc64, _, grads64 = full(copy.deepcopy(model).double(), torch.float64)
        np.savez(args.out + ".grad64.npz", **grads64)
        r.update(loss64=loss64, accuracy64=acc64)
    json.dump(r, open(args.out, "w"))
    print(json.dumps(r))


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("tree")
    t.add_argument("out")
    t.add_argument("--photos")
    t.add_argument("--fmnist", type=int, default=28)
    t.add_argument("--copies", type=int, default=1)
    for name in ("compare", "eval"):
        s = sub.add_parser(name)
        s.add_argument("dir")
        if name == "compare":
            s.add_argument("dump")
        else:
            s.add_argument("onnx")
            s.add_argument("out")
            s.add_argument("--arch", choices=["cnn", "resnet18"], default="cnn")
            s.add_argument("--f64", action="store_true")
        s.add_argument("--resize", default="256")
        s.add_argument("--crop", default="224")
        s.add_argument("--mean", default="0.485/0.456/0.406")
        s.add_argument("--std", default="0.229/0.224/0.225")
        s.add_argument("--pillow", default="13")
    args = ap.parse_args()
    {"tree": tree, "compare": compare, "eval": eval_}[args.cmd](args)


if __name__ == "__main__":
    main()
