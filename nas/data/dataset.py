"""The in-memory dataset every reader returns.

A dataset is one uint8 tensor of images (N×1×H×W) plus per-sample labels and
split membership. It is moved to the GPU whole when there is one; batches are
index tensors into it.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

__all__ = ["FER_CLASSES", "SPLITS", "PER_SAMPLE_META", "FERData"]

#: FER2013 label order, used everywhere inside the toolkit.
FER_CLASSES: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
#: Split codes stored in ``FERData.split`` index into this tuple.
SPLITS: tuple[str, ...] = ("Training", "PublicTest", "PrivateTest")
#: ``FERData.meta`` entries that are lists with one value per sample (sliced by ``select``).
PER_SAMPLE_META: tuple[str, ...] = ("files", "native_labels", "valence", "arousal", "confidence")


@dataclass
class FERData:
    """Images and labels of one dataset, all splits together.

    Attributes:
        images: uint8 N×1×H×W.
        labels: int64 N, indices into ``classes`` (-1 where a format has no label).
        split: int64 N, indices into :data:`SPLITS`.
        classes: class names in label order.
        format: detected format name (``fer2013_csv``, ``ck48``, ``jaffe``, ...).
        source: the path that was read.
        subjects: per-sample subject ids (CK+, JAFFE), else None.
        soft_labels: float32 N×C vote distributions (FER+), else None.
        clean_labels: int64 N true labels when known (SynthFER sidecar), else None.
        skipped: rows/images skipped (``--skip_bad_rows`` or non-image files).
        meta: format-specific extras (e.g. file names), plain values only.
    """

    images: torch.Tensor
    labels: torch.Tensor
    split: torch.Tensor
    classes: list[str]
    format: str
    source: str
    subjects: list[str] | None = None
    soft_labels: torch.Tensor | None = None
    clean_labels: torch.Tensor | None = None
    skipped: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of the stored images."""
        return int(self.images.shape[-2]), int(self.images.shape[-1])

    def select(self, index: torch.Tensor) -> "FERData":
        """A new dataset holding the samples at ``index`` (bool mask or indices)."""
        if index.dtype == torch.bool:
            index = index.nonzero().flatten()
        index = index.to(self.labels.device)
        per_sample = [k for k in PER_SAMPLE_META if isinstance(self.meta.get(k), list)]
        idx_list = index.tolist() if self.subjects is not None or per_sample else None
        meta = dict(self.meta)
        for k in per_sample:
            meta[k] = [meta[k][i] for i in idx_list]  # type: ignore[union-attr]
        return replace(
            self,
            images=self.images[index.to(self.images.device)],
            labels=self.labels[index],
            split=self.split[index.to(self.split.device)],
            subjects=[self.subjects[i] for i in idx_list] if self.subjects is not None else None,  # type: ignore[union-attr]
            soft_labels=self.soft_labels[index.to(self.soft_labels.device)] if self.soft_labels is not None else None,
            clean_labels=self.clean_labels[index.to(self.clean_labels.device)] if self.clean_labels is not None else None,
            meta=meta,
        )

    def subset(self, split_name: str) -> "FERData":
        """The samples of one split (``Training``, ``PublicTest`` or ``PrivateTest``)."""
        code = SPLITS.index(split_name)
        return self.select(self.split == code)

    def to(self, device: torch.device | str) -> "FERData":
        """Move the tensors (images stay uint8) to ``device``."""
        return replace(
            self,
            images=self.images.to(device),
            labels=self.labels.to(device),
            split=self.split.to(device),
            soft_labels=self.soft_labels.to(device) if self.soft_labels is not None else None,
            clean_labels=self.clean_labels.to(device) if self.clean_labels is not None else None,
        )

    def counts(self) -> dict[str, Any]:
        """Counts per split and per class (class names as keys), for ``inspect``."""
        out: dict[str, Any] = {}
        labels = self.labels.cpu()
        split = self.split.cpu()
        for code, name in enumerate(SPLITS):
            m = split == code
            n = int(m.sum())
            if n == 0:
                continue
            per_class = torch.bincount(labels[m & (labels >= 0)], minlength=len(self.classes))
            out[name] = {"total": n, **{c: int(per_class[i]) for i, c in enumerate(self.classes)}}
        return out

    def summary(self) -> dict[str, Any]:
        """The facts a user checks before training, as plain JSON values (what
        ``fernas inspect`` prints)."""
        per_class = self.labels[self.labels >= 0].bincount(minlength=len(self.classes)).tolist()
        out: dict[str, Any] = {
            "path": self.source,
            "format": self.format,
            "image_size": list(self.image_size),
            "num_samples": len(self),
            "classes": list(self.classes),
            "counts": self.counts(),
            "per_class": dict(zip(self.classes, per_class)),
            "subjects": len(set(self.subjects)) if self.subjects is not None else None,
            "skipped": self.skipped,
            "soft_labels": self.soft_labels is not None,
            "clean_labels": self.clean_labels is not None,
        }
        for key in ("variant", "layout", "split_from", "holdout", "ferplus", "crop", "label_map", "dropped_classes",
                    "non_expressions", "min_confidence", "low_confidence_dropped", "preprocess", "cache"):
            if key in self.meta:
                out[key] = self.meta[key]
        return out
