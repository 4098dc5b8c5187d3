"""Throughput of the batched augmentation against a per-sample PIL pipeline.

    python bench/augment.py [--device cpu|cuda|auto] [--n 10000] [--batch_size 256] [--workers 0] [--threads 1]

Both sides augment the same ``n`` 48×48 uint8 images:

* ``pil``: torchvision's per-sample pipeline (PIL image -> RandomCrop(44) ->
  RandomHorizontalFlip -> ColorJitter(0.2, 0.2) -> ToTensor -> Normalize) through a
  DataLoader (``--workers`` processes, default 0: the main process);
* ``batched_same_ops``: ``BatchAugment`` with the same operations (crop 44, flip,
  brightness/contrast 0.2, no affine, no cutout) over the in-memory tensor;
* ``batched_default``: ``BatchAugment()`` with its defaults (adds rotation,
  translation and scale through one ``grid_sample``).

Prints one JSON object with images/s of each and ``ratio`` = batched_same_ops / pil.
The batched figures are the best of three passes (the PIL pass runs once: it is
long enough to average out). torch uses ``--threads`` CPU threads (default 1).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from nas.runtime.cli import ArgumentParser, run as cli_run
from nas.data.augment import BatchAugment
from nas.data.loader import BatchSampler
from nas.runtime.device import resolve_device

if __package__ in (None, ""):
    from common import add_out_arg, emit
else:
    from bench.common import add_out_arg, emit


def _images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, 48, 48), generator=g, dtype=torch.uint8)


def _batched(x: torch.Tensor, aug: BatchAugment, batch_size: int, device: torch.device) -> float:
    """Images/s of one pass over ``x`` (already on ``device``), batches drawn by BatchSampler."""
    g = torch.Generator(device=device).manual_seed(0)
    sampler = BatchSampler(x.shape[0], batch_size, generator=torch.Generator().manual_seed(0))
    aug(x[:batch_size], g)  # warm-up (allocator, kernels)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for idx in sampler:
        out = aug(x[idx.to(device)], g)
    if device.type == "cuda":
        torch.cuda.synchronize()
    assert out.shape[-1] == aug.crop
    return x.shape[0] / (time.perf_counter() - t)


class _PilDataset(torch.utils.data.Dataset):
    def __init__(self, x: torch.Tensor):
        from torchvision import transforms as T

        self.arrays = x[:, 0].numpy()
        self.transform = T.Compose([T.RandomCrop(44), T.RandomHorizontalFlip(), T.ColorJitter(0.2, 0.2),
                                    T.ToTensor(), T.Normalize([0.5], [0.25])])

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, i: int) -> torch.Tensor:
        from PIL import Image

        return self.transform(Image.fromarray(self.arrays[i]))


def _pil(x: torch.Tensor, batch_size: int, workers: int) -> float:
    loader = torch.utils.data.DataLoader(_PilDataset(x), batch_size=batch_size, shuffle=True,
                                         num_workers=workers, generator=torch.Generator().manual_seed(0))
    t = time.perf_counter()
    n = 0
    for batch in loader:
        n += batch.shape[0]
    assert batch.shape[-1] == 44
    return n / (time.perf_counter() - t)


def run(device: str = "cpu", n: int = 10000, batch_size: int = 256, workers: int = 0,
        threads: int | None = 1) -> dict[str, Any]:
    """Measure and return the figures as a plain dict (for ``bench/run.py`` suites). ``threads``
    sets torch's CPU threads for the run (default 1, like the single-process PIL side; on a
    shared machine more threads than free cores make timings erratic); None leaves it alone."""
    dev = resolve_device(device)
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        x = _images(n)
        same = BatchAugment(crop=44, flip=True, brightness=0.2, contrast=0.2, rotate=0, translate=0, scale=(1, 1))
        xd = x.to(dev)
        batched_same = max(_batched(xd, same, batch_size, dev) for _ in range(3))
        batched_default = max(_batched(xd, BatchAugment(), batch_size, dev) for _ in range(3))
        pil = _pil(x, batch_size, workers)
        used = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    return {
        "bench": "augment", "device": str(dev), "n": n, "batch_size": batch_size, "pil_workers": workers,
        "torch_threads": used,
        "images_per_s": {"pil": round(pil), "batched_same_ops": round(batched_same),
                         "batched_default": round(batched_default)},
        "ratio": round(batched_same / pil, 1),
        "ratio_default": round(batched_default / pil, 1),
    }


def get_args_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description="Batched augmentation vs a per-sample PIL pipeline (images/s).")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--n", type=int, default=10000, help="number of 48x48 images")
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers for the PIL pipeline")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: leave torch's default)")
    add_out_arg(p)
    return p


def main(args: argparse.Namespace) -> dict:
    return emit(run(args.device, args.n, args.batch_size, args.workers, args.threads or None), args, indent=None)


if __name__ == "__main__":
    cli_run(main, get_args_parser())
