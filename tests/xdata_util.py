"""Shared helpers of the ensemble and cross-dataset tests: small SynthFER exports read back
through the real readers, and tiny checkpoints in the engine's own format."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from nas.runtime.checkpoint import RunDir, atomic_save, safe_load
from nas.models import build_model
from nas.engine.trainer import TrainConfig, Trainer
from nas.runtime.seeds import seed_everything


def export(kind: str, root: Path, size: int, seed: int = 0) -> Path:
    """A SynthFER export of ``kind`` (fer2013, ck48, jaffe) written under ``root``."""
    from nas.data import synthfer

    out = root / f"{kind}-{size}-{seed}"
    if not (out / "clean_labels.csv").exists():
        synthfer.export(kind, out, size=size, seed=seed)
    return out


def make_checkpoint(run: Path, arch: str, data: Any, *, epochs: int = 1, crop: int | None = None,
                    norm: tuple[float, float] | None = None, train: bool = True, **model_kw: Any) -> Path:
    """best.pt of a tiny ``arch`` trained ``epochs`` on ``data`` (or saved untrained with
    ``train=False``), with its own crop size and normalisation; returns the file."""
    seed_everything(0)
    model = build_model(arch, num_classes=len(data.classes), **model_kw)
    rd = RunDir(run, force=True, quiet=True)
    cfg = TrainConfig(epochs=epochs, batch_size=32, progress=False, snapshot_at=[], crop=crop, drop_path_prob=0.0,
                      learning_rate=0.05, log_interval=1000)
    tr = Trainer(model, data, cfg, rd, norm=norm, args={"arch": arch})
    if train:
        tr.fit()
    else:
        rd.save("best.pt", tr.state_dict())
    return run / "best.pt"


def with_classes(src: Path, dst: Path, classes: list[str]) -> Path:
    """A copy of checkpoint ``src`` rebuilt for another class list (fresh classifier weights)."""
    from nas.models import model_from_spec

    ck = safe_load(src)
    spec = dict(ck["model_spec"])
    spec["kwargs"] = {**spec["kwargs"], "num_classes": len(classes)}
    torch.manual_seed(0)
    model = model_from_spec(spec)
    ck.pop("path", None)
    atomic_save({**ck, "model": model.state_dict(), "model_spec": spec, "classes": list(classes)}, dst)
    return dst
