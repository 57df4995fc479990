"""Test accuracy vs batch size for six normalizations of a small CNN on scikit-learn's digits.

    python examples/digits_norms.py            # the full sweep: writes digits_norms.json and .png here

Every normalization layer runs on normgen's kernels (normgen.torch): BatchNorm, GroupNorm,
LayerNorm, InstanceNorm, no normalization, and a user-written spec, pos_norm.toml
(statistics per spatial position over the batch and the channels). The data set (1797
8x8 images of digits, shipped with scikit-learn, no download) is split 75/25 with a fixed
seed; every run trains for the same number of epochs with SGD (momentum 0.9) and a
learning rate scaled linearly with the batch size, as in Goyal et al. (2017) and in the
GroupNorm paper's batch-size sweep. Test accuracy is measured in eval mode (running
statistics for BatchNorm and pos_norm).

Options: --epochs, --seeds, --batch-sizes, --norms, --out (a folder).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import normgen.torch as nt

HERE = Path(__file__).resolve().parent
NORMS = ("batch", "group", "layer", "instance", "pos_norm", "none")
LABELS = {"batch": "BatchNorm", "group": "GroupNorm (4 groups)", "layer": "LayerNorm (C, H, W)",
          "instance": "InstanceNorm", "pos_norm": "pos_norm.toml (per position)", "none": "no normalization"}
BATCH_SIZES = (2, 4, 8, 16, 32, 64, 128)
#: learning rate at batch size 32; scaled linearly with the batch size
BASE_LR = 0.1


def load_digits() -> tuple[torch.Tensor, ...]:
    """Train and test tensors: images (N, 1, 8, 8) scaled to [0, 1], labels (N,)."""
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    data = sk_digits()
    x = (data.images / 16.0).astype(np.float32)[:, None]
    x_tr, x_te, y_tr, y_te = train_test_split(x, data.target, test_size=0.25, random_state=0, stratify=data.target)
    return (torch.from_numpy(x_tr), torch.from_numpy(y_tr), torch.from_numpy(x_te), torch.from_numpy(y_te))


def norm_layer(kind: str, channels: int, size: int) -> nn.Module:
    """The normalization after a convolution with `channels` outputs of `size` x `size`."""
    if kind == "batch":
        return nt.BatchNorm2d(channels)
    if kind == "group":
        return nt.GroupNorm(4, channels)
    if kind == "layer":
        return nt.LayerNorm((channels, size, size))
    if kind == "instance":
        return nt.InstanceNorm2d(channels, affine=True)
    if kind == "pos_norm":
        return nt.from_spec(HERE / "pos_norm.toml", num_features=channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown normalization {kind!r}; choose from {', '.join(NORMS)}")


def make_model(kind: str) -> nn.Module:
    """conv-norm-ReLU x 2 (8x8 -> 4x4), global average pooling, a linear classifier."""
    def block(c_in: int, c_out: int, stride: int, size: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, stride, padding=1, bias=kind == "none"), norm_layer(kind, c_out, size),
                nn.ReLU()]

    return nn.Sequential(*block(1, 16, 1, 8), *block(16, 32, 2, 4), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(32, 10))


def run(kind: str, batch_size: int, epochs: int, seed: int, data: tuple[torch.Tensor, ...]) -> float:
    """Train one model; its test accuracy (eval mode)."""
    x_tr, y_tr, x_te, y_te = data
    torch.manual_seed(seed)
    model = make_model(kind)
    model(x_tr[:2])  # shapes the lazy pos_norm layers before the optimizer sees the parameters
    opt = torch.optim.SGD(model.parameters(), lr=BASE_LR * batch_size / 32, momentum=0.9)
    order = torch.Generator().manual_seed(seed)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x_tr), generator=order)
        for i in range(0, len(perm) - batch_size + 1, batch_size):  # drop the last partial batch
            idx = perm[i:i + batch_size]
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x_tr[idx]), y_tr[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        return float((model(x_te).argmax(1) == y_te).float().mean())


def plot(results: dict[str, dict[str, list[float]]], batch_sizes: list[int], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for kind, by_bs in results.items():
        mean = [100 * np.mean(by_bs[str(b)]) for b in batch_sizes]
        ax.plot(batch_sizes, mean, marker="o", label=LABELS[kind])
    ax.set_xscale("log", base=2)
    ax.set_xticks(batch_sizes, [str(b) for b in batch_sizes])
    ax.set_xlabel("batch size (learning rate scaled linearly)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--seeds", type=int, default=1, help="runs per (norm, batch size), seeds 0..n-1")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=list(BATCH_SIZES))
    ap.add_argument("--norms", nargs="+", default=list(NORMS), choices=NORMS)
    ap.add_argument("--out", type=Path, default=HERE)
    args = ap.parse_args(argv)

    torch.set_num_threads(1)  # tiny convolutions: one thread is faster, and normgen has its own pool
    data = load_digits()
    results: dict[str, dict[str, list[float]]] = {}
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    for kind in args.norms:
        t0 = time.perf_counter()
        results[kind] = {}
        for bs in args.batch_sizes:
            accs = [run(kind, bs, args.epochs, seed, data) for seed in range(args.seeds)]
            results[kind][str(bs)] = accs
            print(f"{kind:9s} batch {bs:4d}: test accuracy " + " ".join(f"{100 * a:5.1f}%" for a in accs),
                  flush=True)
        seconds[kind] = round(time.perf_counter() - t0, 1)
    total = round(time.perf_counter() - start, 1)

    config = {"epochs": args.epochs, "seeds": args.seeds, "batch_sizes": args.batch_sizes,
              "optimizer": f"SGD momentum 0.9, lr {BASE_LR} * batch_size / 32",
              "train": len(data[0]), "test": len(data[2]), "model": "2 x (conv 3x3, norm, ReLU), avgpool, linear",
              "torch": torch.__version__, "python": platform.python_version(), "cpus": os.cpu_count()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "digits_norms.json").write_text(json.dumps(
        {"config": config, "test_accuracy": results, "seconds": {"per_norm": seconds, "total": total}}, indent=1) + "\n")
    title = (f"digits (8x8), {len(data[0])} train / {len(data[2])} test, {args.epochs} epochs, "
             f"{args.seeds} seed(s); all norms on normgen kernels")
    plot(results, args.batch_sizes, args.out / "digits_norms.png", title)
    print(f"wrote {args.out / 'digits_norms.json'} and digits_norms.png ({total:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
