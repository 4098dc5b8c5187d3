"""Ten-crop evaluation: batched views on the device against per-sample torchvision TenCrop.

    python bench/evaluate.py [--device cpu|cuda|auto] [--quick] [--arch FER_V1] [--n 64] [--batch_size 64]

Both score the same ``n`` uint8 48×48 test images with the same model (eval mode):

* ``fast``: ``nas.engine.evaluate.predict(..., tta="tencrop")`` as the evaluation scripts call it:
  the uint8 tensor on the device, the ten 44×44 views of a whole batch cut and
  normalised by tensor slicing (``eval_views``), one forward over the B·10 views, in
  channels_last (the trainer's default) and, on CUDA, bf16 autocast;
* ``naive``: the reference scripts' way: a DataLoader over a Dataset that turns each
  image into a PIL image, applies torchvision's ``TenCrop(44)``, converts and
  normalises every crop (``ToTensor``, ``Normalize``) and stacks them; the B×10 batch
  is copied to the device and run in fp32, contiguous.

The two sides must agree (the largest difference of their averaged probabilities is
reported and checked). Figures: test images/s end to end (the model included) and,
separately, the views alone (``views_*``: preparing the ten views, no model), each the
best of the rounds, fast and naive taking turns. Prints one JSON document;
:func:`run` returns it for ``bench/run.py``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Callable

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from nas.runtime.cli import ArgumentParser, run as cli_run
from nas.runtime.device import resolve_device

if __package__ in (None, ""):
    from common import add_out_arg, emit
else:
    from bench.common import add_out_arg, emit

MEAN, STD, CROP = 0.5, 0.25, 44


class _TenCropDataset(torch.utils.data.Dataset):
    """Per-sample PIL TenCrop, as the reference test scripts build it."""

    def __init__(self, images: torch.Tensor) -> None:
        from torchvision import transforms as T

        self.arrays = images[:, 0].numpy()
        to_tensor, norm = T.ToTensor(), T.Normalize([MEAN], [STD])
        self.transform = T.Compose([T.TenCrop(CROP),
                                    T.Lambda(lambda crops: torch.stack([norm(to_tensor(c)) for c in crops]))])

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, i: int) -> torch.Tensor:
        from PIL import Image

        return self.transform(Image.fromarray(self.arrays[i]))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _naive_predict(model: torch.nn.Module, images: torch.Tensor, batch_size: int, device: torch.device,
                   views_only: bool = False) -> torch.Tensor | None:
    loader = torch.utils.data.DataLoader(_TenCropDataset(images), batch_size=batch_size, shuffle=False)
    out = []
    with torch.no_grad():
        for crops in loader:  # B×10×1×44×44
            b, v = crops.shape[:2]
            x = crops.view(b * v, *crops.shape[2:]).to(device)
            if views_only:
                continue
            logits = model(x)
            logits = logits[0] if isinstance(logits, (tuple, list)) else logits
            out.append(logits.float().softmax(1).view(b, v, -1).mean(1))
    return None if views_only else torch.cat(out)


def _fast_views(images: torch.Tensor, batch_size: int, device: torch.device, channels_last: bool) -> None:
    from nas.data.augment import eval_views

    for start in range(0, images.shape[0], batch_size):
        views = eval_views(images[start:start + batch_size].to(device), "tencrop", CROP, MEAN, STD)
        flat = views.reshape(-1, *views.shape[2:])
        if channels_last:
            flat.contiguous(memory_format=torch.channels_last)


def _best_of(fns: dict[str, Callable[[], Any]], rounds: int, device: torch.device, n: int) -> dict[str, float]:
    """Images/s of each function: best of ``rounds``, the functions taking turns."""
    best = {k: 0.0 for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            best[k] = max(best[k], n / (time.perf_counter() - t0))
    return best


def run(device: str = "cpu", quick: bool = False, *, arch: str = "FER_V1", init_channels: int = 36, layers: int = 12,
        n: int | None = None, batch_size: int = 64, rounds: int | None = None) -> dict[str, Any]:
    """Measure and return the figures as a dict (see the module docstring). ``quick``
    scores 16 images in one round (about 30 s for FER_V1 C36 L12 on a 2-core CPU)."""
    from nas.engine.evaluate import predict
    from nas.models import build_model

    dev = resolve_device(device)
    n = n or (16 if quick else 64)
    rounds = rounds or (1 if quick else 2)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, 48, 48), dtype=torch.uint8, generator=g)
    torch.manual_seed(0)
    model = build_model(arch, init_channels=init_channels, layers=layers).to(dev).eval()
    fast_model = build_model(arch, init_channels=init_channels, layers=layers).to(dev).eval()
    fast_model.load_state_dict(model.state_dict())
    channels_last = True  # the trainer's and evaluation scripts' default on CPU and CUDA
    fast_model = fast_model.to(memory_format=torch.channels_last)
    amp = dev.type == "cuda"
    images_dev = images.to(dev)

    def fast() -> torch.Tensor:
        return predict(fast_model, images_dev, mean=MEAN, std=STD, crop=CROP, tta="tencrop", batch_size=batch_size,
                       amp=amp, channels_last=channels_last)

    def naive() -> torch.Tensor:
        return _naive_predict(model, images, batch_size, dev)

    # warm-up on a few images (allocator, kernel choice), then the agreement check
    predict(fast_model, images_dev[:4], mean=MEAN, std=STD, crop=CROP, tta="tencrop", amp=amp,
            channels_last=channels_last)
    _naive_predict(model, images[:4], 4, dev)
    fast_p, naive_p = fast(), naive()
    max_diff = float((fast_p.float() - naive_p.float()).abs().max())
    tol = 0.05 if amp else 1e-3  # bf16 logits vs fp32 on CUDA; fp32 both on CPU (layout only)
    assert max_diff < tol, f"batched and per-sample ten-crop disagree: max |dp| = {max_diff}"
    ips = _best_of({"fast": fast, "naive": naive}, rounds, dev, n)
    nv = max(n, 256)  # the views alone are cheap: time them on more images
    many = torch.randint(0, 256, (nv, 1, 48, 48), dtype=torch.uint8, generator=g)
    many_dev = many.to(dev)
    views = _best_of({"fast": lambda: _fast_views(many_dev, batch_size, dev, channels_last),
                      "naive": lambda: _naive_predict(model, many, batch_size, dev, views_only=True)},
                     max(rounds, 2), dev, nv)
    out: dict[str, Any] = {
        "bench": "evaluate_tencrop", "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "settings": {"arch": arch, "init_channels": init_channels, "layers": layers, "images": n,
                     "batch_size": batch_size, "views": 10, "crop": CROP, "rounds": rounds,
                     "fast": "eval_views tencrop on the tensor, channels_last" + (", bf16 autocast" if amp else ""),
                     "naive": "DataLoader, per-sample PIL TenCrop + ToTensor + Normalize, fp32 contiguous"},
        "images_per_s": {"fast": round(ips["fast"], 2), "naive": round(ips["naive"], 2)},
        "ratio": round(ips["fast"] / ips["naive"], 2),
        "views_images_per_s": {"fast": round(views["fast"]), "naive": round(views["naive"])},
        "views_ratio": round(views["fast"] / views["naive"], 1),
        "max_prob_diff": max_diff,
    }
    if dev.type == "cuda":
        out["peak_mb"] = round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)
    return out


def get_args_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="bench/evaluate.py", description="Ten-crop evaluation: batched views vs per-sample "
                       "torchvision TenCrop.")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--quick", action="store_true", help="16 images, one round")
    p.add_argument("--arch", default="FER_V1")
    p.add_argument("--init_channels", type=int, default=36)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--n", type=int, default=None, help="test images (default 64; 16 with --quick)")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    add_out_arg(p)
    return p


def main(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    return emit(run(args.device, args.quick, arch=args.arch, init_channels=args.init_channels,
                    layers=args.layers, n=args.n, batch_size=args.batch_size), args)


if __name__ == "__main__":
    cli_run(main, get_args_parser())
