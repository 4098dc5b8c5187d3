"""A checkpoint as a deployable model: ONNX or TorchScript, verified against PyTorch.

The exported model takes ``N×1×S×S`` float32 pixels scaled to [0, 1] (``S`` the
checkpoint's input size, a centre crop of the 48×48 face) and returns the logits of
``classes``; the checkpoint's normalisation is folded in, the auxiliary head is dropped
(eval mode), and the metadata names the classes, sizes and normalisation
(:data:`METADATA_KEYS`: ONNX ``metadata_props``, a ``fernas.json`` extra file in TorchScript).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nas.runtime.errors import FerNasError

__all__ = ["FORMATS", "METADATA_KEYS", "Deployable", "deployable", "export_onnx", "export_torchscript",
           "verify_onnx", "verify_torchscript", "onnx_metadata", "export_checkpoint"]

FORMATS = ("onnx", "torchscript")
METADATA_KEYS = ("fernas_version", "arch", "classes", "input_size", "image_size", "input", "mean", "std", "parameters")
MISSING_ONNX = 'ONNX export and ONNX Runtime need the export extra: pip install "fer-nas[export]" (onnx, onnxruntime, onnxscript)'


class Deployable(nn.Module):
    """``model`` in eval mode behind its normalisation: pixels in [0, 1] -> logits."""

    def __init__(self, model: nn.Module, mean: float, std: float) -> None:
        super().__init__()
        self.model = model.eval()
        self.mean, self.std = float(mean), float(std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model((x - self.mean) / self.std)
        return out[0] if isinstance(out, (tuple, list)) else out


def deployable(checkpoint: str | Path) -> tuple[Deployable, dict[str, Any]]:
    """The checkpoint's model as a :class:`Deployable` on the CPU, and its metadata."""
    import nas
    from nas.data.dataset import FER_CLASSES
    from nas.engine.evaluate import checkpoint_image_size, checkpoint_norm, load_model_from_checkpoint
    from nas.models import count_parameters

    model, ckpt = load_model_from_checkpoint(checkpoint, "cpu")
    mean, std, size = checkpoint_norm(ckpt)
    side = checkpoint_image_size(ckpt)
    spec = ckpt.get("model_spec") or {}
    meta = {"fernas_version": nas.__version__, "arch": str(spec.get("arch", spec.get("name", "?"))),
            "classes": list(ckpt.get("classes") or FER_CLASSES), "input_size": int(size), "image_size": side,
            "input": f"float32 N x 1 x input_size x input_size, pixel / 255 (a centre crop of the {side}x{side} face); "
                     "normalisation folded in", "mean": mean, "std": std,
            "parameters": count_parameters(model)}
    return Deployable(model, mean, std).eval(), meta


def _onnx(exporting: bool = False) -> tuple[Any, Any]:
    """onnx and onnxruntime (and, to export, onnxscript, which torch's dynamo exporter needs), or
    one line naming the extra to install."""
    try:
        import onnx
        import onnxruntime
        if exporting:
            import onnxscript  # noqa: F401
    except ImportError:
        raise FerNasError(MISSING_ONNX) from None
    return onnx, onnxruntime


def _tmp(out: Path) -> Path:
    return out.with_name(f".{out.name}.tmp{os.getpid()}")


def export_onnx(module: Deployable, meta: dict[str, Any], out: str | Path, *, dynamic_batch: bool = False,
                batch_size: int = 1) -> Path:
    """Write ``module`` as ONNX (torch's exporter, ``dynamo=True``) with ``meta`` as
    ``metadata_props``; a fixed batch of ``batch_size`` unless ``dynamic_batch``."""
    onnx, _ = _onnx(exporting=True)
    out = Path(out)
    size = int(meta["input_size"])
    example = torch.zeros(2 if dynamic_batch else batch_size, 1, size, size)
    kw: dict[str, Any] = {"dynamic_shapes": ({0: torch.export.Dim("batch", min=1)},)} if dynamic_batch else {}
    tmp = _tmp(out)
    try:
        # the exporter narrates each pass on stdout and warns about traced shape checks: keep the
        # command's own output clean, an exporter failure still raises
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (example,), str(tmp), input_names=["pixels"], output_names=["logits"],
                              dynamo=True, external_data=False, **kw)
        model = onnx.load(str(tmp))
        del model.metadata_props[:]
        for key in METADATA_KEYS:
            value = meta[key]
            entry = model.metadata_props.add()
            entry.key, entry.value = key, json.dumps(value) if isinstance(value, list) else str(value)
        onnx.save(model, str(tmp))
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def export_torchscript(module: Deployable, meta: dict[str, Any], out: str | Path, *, batch_size: int = 1) -> Path:
    """Write ``module`` traced as TorchScript, ``meta`` in its extra file ``fernas.json``
    (``torch.jit`` is deprecated in favour of ``torch.export``; it still runs on torch 2.14)."""
    out = Path(out)
    size = int(meta["input_size"])
    tmp = _tmp(out)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(module, torch.zeros(batch_size, 1, size, size), check_trace=False)
            torch.jit.save(traced, str(tmp), _extra_files={"fernas.json": json.dumps(meta)})
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _random_batch(n: int, size: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, size, size), generator=g).float() / 255.0


def verify_onnx(path: str | Path, module: Deployable, *, batch: int = 8, seed: int = 0) -> float:
    """Max absolute difference of logits between ONNX Runtime running ``path`` and
    ``module`` on a random batch (the model's own batch size when it is fixed)."""
    _, ort = _onnx()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    n = inp.shape[0] if isinstance(inp.shape[0], int) else batch
    x = _random_batch(n, int(inp.shape[-1]), seed)
    got = sess.run(None, {inp.name: x.numpy()})[0]
    with torch.no_grad():
        want = module(x).numpy()
    return float(np.abs(got - want).max())


def verify_torchscript(path: str | Path, module: Deployable, size: int, *, batch: int = 8, seed: int = 0) -> float:
    """Max absolute difference of logits between the saved TorchScript file and ``module``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = torch.jit.load(str(path), map_location="cpu")
    x = _random_batch(batch, size, seed)
    with torch.no_grad():
        return float((loaded(x) - module(x)).abs().max())


def onnx_metadata(path: str | Path) -> dict[str, Any]:
    """The fer-nas metadata of an exported ONNX file (classes as a list, sizes as ints)."""
    _, ort = _onnx()
    try:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for unreadable files
        raise FerNasError(f"{path}: not an ONNX model ONNX Runtime can load ({' '.join(str(e).split())[:100]})") from None
    meta = dict(sess.get_modelmeta().custom_metadata_map)
    missing = [k for k in ("classes", "input_size", "image_size") if k not in meta]
    if missing:
        raise FerNasError(f"{path}: not exported by fernas export (metadata lacks {', '.join(missing)})")
    try:
        return {**meta, "classes": json.loads(meta["classes"]), "input_size": int(meta["input_size"]),
                "image_size": int(meta["image_size"])}
    except (ValueError, TypeError):
        raise FerNasError(f"{path}: unreadable fer-nas metadata") from None


def export_checkpoint(checkpoint: str | Path, fmt: str = "onnx", out: str | Path | None = None, *,
                      dynamic_batch: bool = False, batch_size: int = 1, verify_batch: int = 8) -> dict[str, Any]:
    """Export ``checkpoint`` to ``out`` (default: next to it, ``.onnx``/``.ts``), verify it and
    return a report: file, format, metadata, ``max_abs_diff`` of the logits."""
    if fmt not in FORMATS:
        raise FerNasError(f"--format {fmt!r}: choose from {', '.join(FORMATS)}")
    if fmt == "onnx":
        _onnx(exporting=True)
    module, meta = deployable(checkpoint)
    src = Path(checkpoint)
    default = (src / "best" if src.is_dir() else src.with_suffix("")).with_suffix(".onnx" if fmt == "onnx" else ".ts")
    out = Path(out) if out else default
    if fmt == "onnx":
        export_onnx(module, meta, out, dynamic_batch=dynamic_batch, batch_size=batch_size)
        diff = verify_onnx(out, module, batch=verify_batch)
    else:
        export_torchscript(module, meta, out, batch_size=batch_size)
        diff = verify_torchscript(out, module, int(meta["input_size"]), batch=verify_batch)
    return {"file": str(out), "format": fmt, "dynamic_batch": bool(dynamic_batch) if fmt == "onnx" else True,
            "max_abs_diff": diff, "bytes": out.stat().st_size, **meta}
