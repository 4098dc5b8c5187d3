"""The real annotator disagreement behind SynthFER's label noise, and where each noise mode puts
its flips.

    python bench/ferplus_noise.py [--ferplus ../shared/data/ferplus/fer2013new.csv] [--n 4000]
                                  [--noise 0.3] [--class_rates 0.1,0.3,0.4]
                                  [--out bench/results-cpu-ferplus-noise.json]

From the published FER+ votes (ten taggers per FER2013 image): the single-tagger disagreement
with the majority, overall, by fifth of the images from the most ambiguous up, and by majority
class (``ambiguous`` follows this curve); the FER2013 → FER+ transition matrix, row i the vote
distribution of the images whose FER+ majority is i, and the real disagreement it implies (what
``ferplus`` flips by). Then, on ``--n`` SynthFER Training faces (seed 0, FER2013's class
balance, difficulty 0 and 1), the share of each intensity fifth that each noise mode flips at
``--noise``, and the mean intensity of flipped and kept faces; at each of ``--class_rates``, each
class's share of wrong labels under ``uniform`` and ``ferplus`` noise. One JSON document with
provenance.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from nas.runtime.cli import ArgumentParser, float_list, run as cli_run

if __package__ in (None, ""):
    from common import add_out_arg, emit
else:
    from bench.common import add_out_arg, emit

DEFAULT_FERPLUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "ferplus" / "fer2013new.csv"


def ferplus_statistics(path: Path) -> dict[str, Any]:
    """Disagreement and the transition matrix of the FER+ file at ``path``."""
    from nas.data.dataset import FER_CLASSES
    from nas.data.ferplus import disagreement_from_votes, fer_votes, read_ferplus, transition_from_votes

    votes7 = fer_votes(path)
    fifths = disagreement_from_votes(votes7, bins=5)
    total = votes7.sum(1)
    keep = total > 0
    share = votes7[keep].max(1) / total[keep]
    majority = votes7[keep].argmax(1)
    by_class = {c: round(100 * float(1 - share[majority == k].mean()), 2) for k, c in enumerate(FER_CLASSES)}
    matrix, counts = transition_from_votes(read_ferplus(path)[1])
    rate = 1 - float((np.diag(matrix) * counts).sum() / counts.sum())
    return {"images_with_votes": fifths["images"], "disagreement_pct": round(100 * fifths["disagreement"], 2),
            "by_fifth": [{"share_min_pct": round(100 * b["share_min"], 1), "share_max_pct": round(100 * b["share_max"], 1),
                          "mean_share_pct": round(100 * b["mean_share"], 1),
                          "disagreement_pct": round(100 * b["disagreement"], 1)} for b in fifths["bins"]],
            "disagreement_by_majority_class_pct": by_class,
            "transition": {"classes": list(FER_CLASSES), "matrix": np.round(matrix, 4).tolist(),
                           "images_per_majority_class": counts.tolist(), "real_disagreement_pct": round(100 * rate, 2),
                           "flip_rate_by_class_pct": {c: round(100 * (1 - matrix[k, k]), 1)
                                                      for k, c in enumerate(FER_CLASSES)}}}


def where_flips_sit(n: int, noise: float, difficulty: float, seed: int = 0) -> dict[str, Any]:
    """Per noise mode: the flipped share of each intensity fifth (expressive classes, weakest
    first) and the mean intensity of flipped and kept faces, on ``n`` Training faces."""
    from nas.data.dataset import FER_CLASSES
    from nas.data.synthfer import FER_TRAIN_COUNTS, NOISE_MODES, ambiguity_score, class_counts, flip_labels, render

    labels = np.repeat(np.arange(7), class_counts(n, FER_TRAIN_COUNTS))
    np.random.default_rng(seed).shuffle(labels)
    _, _, extra = render(n, seed, labels=labels, difficulty=difficulty, substream=0)
    inten = np.asarray(extra["intensity"], dtype=np.float64)
    amb = ambiguity_score(labels, inten, extra["au"])
    expressive = labels != FER_CLASSES.index("neutral")
    out = {}
    for mode in NOISE_MODES:
        noisy = flip_labels(labels, noise, np.random.default_rng([seed, 4]), mode=mode, ambiguity=amb)
        flipped = noisy != labels
        # fifths of intensity within each expressive class, pooled
        rank = np.zeros(n)
        for c in set(labels[expressive].tolist()):
            m = labels == c
            rank[m] = np.argsort(np.argsort(inten[m], kind="stable"), kind="stable") / max(m.sum(), 1)
        fifth = np.minimum((rank * 5).astype(int), 4)
        out[mode] = {"flipped": int(flipped.sum()),
                     "flip_rate_by_intensity_fifth_pct": [round(100 * float(flipped[expressive & (fifth == q)].mean()), 1)
                                                          for q in range(5)],
                     "mean_intensity_flipped": round(float(inten[flipped].mean()), 3),
                     "mean_intensity_kept": round(float(inten[~flipped].mean()), 3)}
    return out


def wrong_by_class(n: int, rates: list[float], seed: int = 0) -> dict[str, Any]:
    """Per rate and mode (``uniform``, ``ferplus``; ``ambiguous`` keeps each class's share, as
    ``uniform``): the share of each class's Training labels that are wrong, the commonest wrong
    label's share, the classes whose faces carry more wrong labels than right ones, and those
    whose commonest label is a wrong one, on ``n`` faces with FER2013's class balance. Where a
    wrong label is the commonest, nothing that trusts what most of a class's labels say can put
    that class right."""
    from nas.data.dataset import FER_CLASSES
    from nas.data.synthfer import FER_TRAIN_COUNTS, class_counts, flip_labels

    labels = np.repeat(np.arange(7), class_counts(n, FER_TRAIN_COUNTS))
    out: dict[str, Any] = {}
    for rate in rates:
        for mode in ("uniform", "ferplus"):
            noisy = flip_labels(labels, rate, np.random.default_rng([seed, 5]), mode=mode)
            rows = {}
            for k, c in enumerate(FER_CLASSES):
                given = np.bincount(noisy[labels == k], minlength=7) / max(int((labels == k).sum()), 1)
                other = given.copy()
                other[k] = -1.0  # the commonest label that is not the class's own
                j = int(other.argmax())
                rows[c] = {"wrong_pct": round(100 * float(1 - given[k]), 1), "commonest_wrong": FER_CLASSES[j],
                           "commonest_wrong_pct": round(100 * float(given[j]), 1)}
            out[f"{mode} {round(100 * rate)} %"] = {
                "by_class": rows, "majority_wrong": [c for c, r in rows.items() if r["wrong_pct"] > 50],
                # the commonest label of the class's faces is a wrong one
                "plurality_wrong": [c for c, r in rows.items() if r["commonest_wrong_pct"] > 100 - r["wrong_pct"]]}
    return out


def get_args_parser() -> ArgumentParser:
    p = ArgumentParser(prog="bench/ferplus_noise.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--ferplus", default=str(DEFAULT_FERPLUS), help="FER+ fer2013new.csv")
    p.add_argument("--n", type=int, default=4000, help="SynthFER Training faces for the noise modes")
    p.add_argument("--noise", type=float, default=0.3, help="share of labels each mode flips")
    p.add_argument("--class_rates", type=float_list, default=[0.1, 0.3, 0.4],
                   help="noise rates at which to report each class's share of wrong labels (the grid's)")
    add_out_arg(p)
    return p


def main(args: argparse.Namespace) -> dict[str, Any]:
    from nas.runtime.errors import FerNasError

    if not Path(args.ferplus).is_file():
        raise FerNasError(f"--ferplus {args.ferplus}: no such file")
    if args.n < 70 or not 0.0 < args.noise < 1.0:
        raise FerNasError(f"--n {args.n} --noise {args.noise}: need at least 70 faces and a share in (0, 1)")
    rates = list(args.class_rates)
    if not rates or not all(0.0 < r < 1.0 for r in rates):
        raise FerNasError(f"--class_rates {args.class_rates}: shares in (0, 1)")
    doc = {"bench": "ferplus_noise", "ferplus": ferplus_statistics(Path(args.ferplus)),
           "synthfer": {f"difficulty_{d:g}": where_flips_sit(args.n, args.noise, d) for d in (0.0, 1.0)},
           "wrong_labels_by_class": wrong_by_class(args.n, rates),
           "n": args.n, "noise": args.noise, "class_rates": rates}
    return emit(doc, args, device="cpu")


if __name__ == "__main__":
    cli_run(main, get_args_parser())
