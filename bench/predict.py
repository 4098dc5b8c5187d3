"""``fernas predict`` speed: faces per second for detection + model, eager PyTorch against
ONNX Runtime, at batch 1 and 64, on the CPU.

    python bench/predict.py [--quick] [--threads 1] [--rounds 3] [--out FILE]

On one real photograph (scikit-image's ``astronaut()``, 512×512, one face): the Haar
cascade alone (photos/s), then for FER_V1 C36 L12 and cnn_deep (random weights: speed does
not depend on them) the model alone on B faces and detection + crop + model on B photos,
``torch`` (the checkpoint, ``TorchClassifier``) and ``onnx`` (``fernas export --dynamic_batch``,
``OnnxClassifier``, ONNX Runtime's CPU provider), B = 1 and 64, the two taking turns in one
process (best of ``--rounds``). Both run on ``--threads`` intra-op threads. Prints one JSON
document and a table.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch

from nas.runtime.cli import ArgumentParser, run as cli_run

if __package__ in (None, ""):
    from common import add_out_arg, emit
else:
    from bench.common import add_out_arg, emit

ARCHES = (("FER_V1", {"init_channels": 36, "layers": 12}), ("cnn_deep", {}))


def _checkpoint(folder: Path, arch: str, kw: dict[str, Any]) -> Path:
    from nas.data.dataset import FER_CLASSES
    from nas.models import build_model, model_spec

    torch.manual_seed(0)
    model = build_model(arch, **kw)
    path = folder / f"{arch}.pt"
    torch.save({"model": model.state_dict(), "model_spec": model_spec(model), "classes": list(FER_CLASSES),
                "normalization": {"mean": 0.5, "std": 0.25},
                "input_size": getattr(model, "default_input_size", 44)}, path)
    return path


def _best(fn: Callable[[], Any], rounds: int) -> float:
    """Best wall time of ``rounds`` calls (after one warm-up)."""
    fn()
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def run(quick: bool = False, threads: int = 1, rounds: int | None = None) -> dict[str, Any]:
    """Measure and return the figures."""
    from PIL import Image
    from skimage import data as skdata

    from nas.predict.export import deployable, export_onnx
    from nas.predict.faces import FaceDetector, crop_faces, opencv
    from nas.predict.pipeline import OnnxClassifier, TorchClassifier

    torch.set_num_threads(threads)
    opencv().setNumThreads(threads)  # the cascade's own thread pool, held to the same count
    rounds = rounds or (2 if quick else 5)
    gray = np.asarray(Image.fromarray(skdata.astronaut()).convert("L"))
    det = FaceDetector()
    boxes = det.detect(gray)
    assert len(boxes) == 1
    t_det = _best(lambda: det.detect(gray), rounds)
    face = crop_faces(gray, boxes)
    out: dict[str, Any] = {"bench": "predict", "device": "cpu", "torch": torch.__version__, "threads": threads,
                           "rounds": rounds, "photo": "skimage astronaut 512x512, one face",
                           "detection_photos_per_s": round(1.0 / t_det, 1), "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for arch, kw in ARCHES:
            ckpt = _checkpoint(Path(tmp), arch, kw)
            module, meta = deployable(ckpt)
            onnx_path = export_onnx(module, meta, Path(tmp) / f"{arch}.onnx", dynamic_batch=True)
            eager = TorchClassifier(ckpt, "cpu")
            ort = OnnxClassifier(onnx_path, threads=threads)
            row: dict[str, Any] = {"parameters": meta["parameters"], "input_size": meta["input_size"]}
            for batch in (1, 64):
                faces = face.repeat(batch, 1, 1, 1)
                photos = [gray] * batch

                def end_to_end(clf: Any) -> None:
                    crops = [crop_faces(g, det.detect(g)) for g in photos]
                    clf(torch.cat(crops), "center")

                model_t = {"torch": float("inf"), "onnx": float("inf")}
                e2e_t = dict(model_t)
                r = 1 if (quick and batch == 64) else rounds
                for _ in range(max(1, r)):  # take turns so both see the same load
                    for name, clf in (("torch", eager), ("onnx", ort)):
                        model_t[name] = min(model_t[name], _best(lambda: clf(faces, "center"), 1))
                        e2e_t[name] = min(e2e_t[name], _best(lambda: end_to_end(clf), 1))
                row[f"batch{batch}"] = {
                    "model_faces_per_s": {k: round(batch / v, 1) for k, v in model_t.items()},
                    "detect_and_model_faces_per_s": {k: round(batch / v, 1) for k, v in e2e_t.items()},
                    "onnx_over_torch_model": round(model_t["torch"] / model_t["onnx"], 2),
                    "onnx_over_torch_end_to_end": round(e2e_t["torch"] / e2e_t["onnx"], 2),
                }
            out["models"][f"{arch}" + (f" C{kw['init_channels']} L{kw['layers']}" if kw else "")] = row
    return out


def table(res: dict[str, Any]) -> str:
    lines = [f"detection alone (Haar cascade, 512x512 photo): {res['detection_photos_per_s']} photos/s", "",
             "| model | batch | model torch | model onnx | ratio | detect+model torch | detect+model onnx | ratio |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, row in res["models"].items():
        for b in (1, 64):
            r = row[f"batch{b}"]
            m, e = r["model_faces_per_s"], r["detect_and_model_faces_per_s"]
            lines.append(f"| {name} | {b} | {m['torch']:,} | {m['onnx']:,} | {r['onnx_over_torch_model']} | "
                         f"{e['torch']:,} | {e['onnx']:,} | {r['onnx_over_torch_end_to_end']} |")
    return "\n".join(lines) + "\n(faces/s; ratio = ONNX Runtime / eager PyTorch)"


def get_args_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="bench/predict.py", description="fernas predict speed: eager PyTorch vs ONNX Runtime.")
    p.add_argument("--quick", action="store_true", help="two rounds, one at batch 64")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads for both (default 1)")
    p.add_argument("--rounds", type=int, default=None)
    add_out_arg(p)
    return p


def main(args: argparse.Namespace) -> dict[str, Any]:
    res = run(args.quick, args.threads, args.rounds)
    doc = emit(res, args, device="cpu")
    print(table(res))
    return doc


if __name__ == "__main__":
    cli_run(main, get_args_parser())
