"""PNG reports of a training run: curves, confusion matrix, saliency maps,
misclassification panels and the cell diagrams of the genotype.

matplotlib is optional (``pip install -e ".[plots]"``): without it every
function prints one notice and returns nothing. The Agg backend is forced, so
no display is needed.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from nas.models.genotypes import Genotype

__all__ = ["have_matplotlib", "save_figure", "plot_curves", "plot_search_curves", "plot_confusion", "saliency",
           "plot_saliency", "plot_misclassified", "plot_cell", "plot_cells", "write_report"]

_NOTICE_SHOWN = False


def have_matplotlib(notice: bool = True) -> bool:
    """True when matplotlib imports; otherwise print one notice (once) and return False."""
    global _NOTICE_SHOWN
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken install must not crash a finished run
        if notice and not _NOTICE_SHOWN:
            print("notice: matplotlib is not installed; skipping PNG reports (pip install matplotlib)",
                  file=sys.stderr)
            _NOTICE_SHOWN = True
        return False
    return True


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path) -> Path:
    """Write ``fig`` as a PNG atomically (a temporary file renamed over ``path``) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    _plt().close(fig)
    tmp.replace(path)
    return path


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


# ----------------------------------------------------------------------------- curves
def plot_curves(rows: Sequence[Mapping[str, Any]], path: str | Path, title: str = "") -> Path | None:
    """Loss and accuracy per epoch (train / val = PublicTest / test = PrivateTest)
    from metrics.csv rows; blanks (epochs without validation) are skipped."""
    if not rows or not have_matplotlib():
        return None
    plt = _plt()
    epochs = [_num(r.get("epoch")) for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, what in zip(axes, ("loss", "acc")):
        for split, style in (("train", "-"), ("val", "-o"), ("test", "--s")):
            key = f"{split}_{what}"
            pts = [(e, _num(r.get(key))) for e, r in zip(epochs, rows)]
            pts = [(e, v) for e, v in pts if not math.isnan(v)]
            if pts:
                label = {"train": "train", "val": "val (PublicTest)", "test": "test (PrivateTest)"}[split]
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=label, markersize=3)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel("accuracy (%)" if what == "acc" else "cross-entropy")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title or "training curves")
    return save_figure(fig, Path(path))


def plot_search_curves(rows: Sequence[Mapping[str, Any]], path: str | Path, title: str = "") -> Path | None:
    """A search's metrics.csv per epoch: weight and architecture losses, accuracy on the two
    halves of Training, the share of parameter-free operations in the current genotype
    (collapse shows as it rising) with the anti-collapse weights that are in use, and the
    entropy of the undecided edges' architecture weights (a supernet that learns before SGAS
    decides shows it falling from 100 %)."""
    if not rows or not have_matplotlib(notice=False):
        return None
    plt = _plt()
    epochs = [_num(r.get("epoch")) for r in rows]

    def series(key: str, scale: float = 1.0) -> tuple[list[float], list[float]]:
        pts = [(e, scale * _num(r.get(key))) for e, r in zip(epochs, rows)]
        pts = [(e, v) for e, v in pts if not math.isnan(v)]
        return [p[0] for p in pts], [p[1] for p in pts]

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for ax, keys, ylabel in ((axes[0], (("train_loss", "weight half"), ("arch_loss", "architecture half")),
                              "cross-entropy"),
                             (axes[1], (("train_acc", "weight half (training batches)"),
                                        ("valid_acc", "architecture half (--post_val)")), "accuracy (%)")):
        for key, label in keys:
            x, y = series(key)
            if x:
                ax.plot(x, y, "-o", markersize=3, label=label)
        ax.set_ylabel(ylabel)
    x, y = series("param_free_share", 100.0)
    axes[2].plot(x, y, "-o", markersize=3, color="tab:red", label="parameter-free ops in the genotype")
    x, y = series("alpha_entropy", 100.0)
    if x:  # 100 = uniform architecture weights; falls as the supernet learns which op each edge wants
        axes[2].plot(x, y, "-s", markersize=3, color="tab:purple", label="alpha entropy, undecided edges (% of max)")
    axes[2].set_ylim(-3, 103)
    axes[2].set_ylabel("%")
    for key, label in (("aux_skip", "DARTS- auxiliary skip x100"), ("beta_decay_weight", "beta-decay weight x100")):
        x, y = series(key, 100.0)
        if any(v != 0 for v in y):
            axes[2].plot(x, y, "--", label=label)
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title or "search")
    return save_figure(fig, Path(path))


# ----------------------------------------------------------------------------- confusion
def plot_confusion(cm: torch.Tensor | Sequence[Sequence[int]], classes: Sequence[str], path: str | Path,
                   title: str = "confusion matrix") -> Path | None:
    """Row-normalised confusion matrix (colour) with the counts written in each cell."""
    if not have_matplotlib():
        return None
    plt = _plt()
    cm = torch.as_tensor(cm, dtype=torch.float64)
    rates = cm / cm.sum(1, keepdim=True).clamp(min=1)
    n = len(classes)
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * n, 0.8 + 0.7 * n))
    im = ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{int(cm[i, j])}\n{100 * rates[i, j]:.0f}%", ha="center", va="center", fontsize=7,
                    color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    return save_figure(fig, Path(path))


# ----------------------------------------------------------------------------- saliency
def saliency(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, mean: float, std: float,
             crop: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of the cross-entropy loss w.r.t. the input pixels of the centre crop.

    Returns ``(crops, maps)``: the normalised input crops (B×crop×crop) and
    ``|d loss / d pixel|`` (B×crop×crop), both on the CPU. The model is put in
    eval mode for the pass (batch-norm statistics untouched)."""
    from nas.data.augment import eval_views

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        x = eval_views(images.to(device), "center", crop, mean, std)[0].float().detach().requires_grad_(True)
        logits = model(x)
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        loss = F.cross_entropy(logits.float(), labels.to(device), reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    finally:
        model.train(was_training)
    return x.detach()[:, 0].cpu(), grad.abs()[:, 0].cpu()


def _pick_per_class(labels: torch.Tensor, num_classes: int, k: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for c in range(num_classes):
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(idx.numel(), generator=g)[:k]]
        out.append(idx.tolist())
    return out


def plot_saliency(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, classes: Sequence[str],
                  path: str | Path, *, mean: float, std: float, crop: int, per_class: int = 2,
                  seed: int = 0) -> Path | None:
    """For ``per_class`` images of each class: the input crop and its saliency map."""
    if not have_matplotlib():
        return None
    labels = labels.cpu()
    picks = _pick_per_class(labels, len(classes), per_class, seed)
    flat = [i for p in picks for i in p]
    if not flat:
        return None
    idx = torch.tensor(flat)
    crops, maps = saliency(model, images[idx.to(images.device)], labels[idx], mean=mean, std=std, crop=crop)
    plt = _plt()
    rows = len(classes)
    fig, axes = plt.subplots(rows, 2 * per_class, figsize=(2.0 * per_class * 1.6, 1.7 * rows), squeeze=False,
                             layout="constrained")
    k = 0
    for c, p in enumerate(picks):
        for j in range(per_class):
            a_img, a_sal = axes[c][2 * j], axes[c][2 * j + 1]
            a_img.axis("off")
            a_sal.axis("off")
            if j < len(p):
                a_img.imshow(crops[k].numpy(), cmap="gray")
                m = maps[k]
                a_sal.imshow((m / m.max().clamp(min=1e-12)).numpy(), cmap="hot", vmin=0, vmax=1)
                k += 1
            if j == 0:
                a_img.set_title(classes[c], fontsize=8, loc="left")
    fig.suptitle("saliency: |d loss / d pixel| (image, map)")
    return save_figure(fig, Path(path))


# ----------------------------------------------------------------------------- misclassified
def plot_misclassified(images: torch.Tensor, labels: torch.Tensor, preds: torch.Tensor, classes: Sequence[str],
                       path: str | Path, seed: int = 0) -> Path | None:
    """One row per predicted class c: a correctly classified example of c, an
    image wrongly predicted as c, and an example of that image's true class."""
    if not have_matplotlib():
        return None
    plt = _plt()
    labels, preds = labels.cpu(), preds.cpu()
    imgs = images.cpu()
    g = torch.Generator().manual_seed(seed)

    def one(mask: torch.Tensor) -> int | None:
        idx = mask.nonzero().flatten()
        if idx.numel() == 0:
            return None
        return int(idx[torch.randint(idx.numel(), (1,), generator=g)])

    n = len(classes)
    fig, axes = plt.subplots(n, 3, figsize=(5.4, 1.9 * n), squeeze=False, layout="constrained")
    for c in range(n):
        correct = one((labels == c) & (preds == c))
        wrong = one((preds == c) & (labels != c))
        true_ex = one((labels == labels[wrong]) & (preds == labels[wrong])) if wrong is not None else None
        cells = [(correct, f"{classes[c]}: correct"),
                 (wrong, f"true {classes[int(labels[wrong])]} -> {classes[c]}" if wrong is not None else "no error"),
                 (true_ex, f"a {classes[int(labels[wrong])]}" if wrong is not None else "")]
        for j, (i, title) in enumerate(cells):
            ax = axes[c][j]
            ax.axis("off")
            if i is not None:
                ax.imshow(imgs[i, 0].numpy(), cmap="gray", vmin=0, vmax=255)
            ax.set_title(title, fontsize=7)
    fig.suptitle("per predicted class: correct | misclassified | its true class", fontsize=9)
    return save_figure(fig, Path(path))


# ----------------------------------------------------------------------------- cells
def plot_cell(cell: Sequence[tuple[str, int]], concat: Sequence[int], path: str | Path, title: str = "") -> Path | None:
    """A cell as a graph: inputs c_{k-2}, c_{k-1} on the left, intermediate nodes,
    edges labelled with their operations, concatenated nodes joined to c_{k}."""
    if not have_matplotlib():
        return None
    plt = _plt()
    steps = len(cell) // 2
    pos: dict[int, tuple[float, float]] = {0: (0.0, 1.2), 1: (0.0, -1.2)}
    for i in range(steps):
        pos[i + 2] = (2.2 + 2.0 * i, 1.5 if i % 2 == 0 else -1.5)
    out_pos = (2.2 + 2.0 * steps + 0.8, 0.0)
    names = {0: "$c_{k-2}$", 1: "$c_{k-1}$"}
    fig, ax = plt.subplots(figsize=(3.0 + 2.0 * steps, 4.2))
    colours = plt.get_cmap("tab10")

    def arrow(a, b, colour, label=None, rad=0.0, t=0.5):
        ax.annotate("", xy=b, xytext=a, arrowprops=dict(arrowstyle="-|>", color=colour, lw=1.2,
                                                        shrinkA=14, shrinkB=14,
                                                        connectionstyle=f"arc3,rad={rad}"))
        if label:
            # a point on matplotlib's arc3 Bezier (control point = mid + rad * (dy, -dx));
            # equal aspect keeps data and display directions the same
            dx, dy = b[0] - a[0], b[1] - a[1]
            c = ((a[0] + b[0]) / 2 + rad * dy, (a[1] + b[1]) / 2 - rad * dx)
            px = (1 - t) ** 2 * a[0] + 2 * t * (1 - t) * c[0] + t ** 2 * b[0]
            py = (1 - t) ** 2 * a[1] + 2 * t * (1 - t) * c[1] + t ** 2 * b[1]
            ax.text(px, py, label, fontsize=6.5, ha="center", va="center", color=colour,
                    bbox=dict(boxstyle="round,pad=0.15", fc="white", ec=colour, lw=0.6))

    for k, (op, src) in enumerate(cell):
        node = k // 2 + 2
        arrow(pos[src], pos[node], colours(k % 10), op, 0.18 if k % 2 == 0 else -0.18, 0.45 if k % 2 == 0 else 0.6)
    for j in concat:
        arrow(pos[j], out_pos, "0.6")
    for i, (x, y) in pos.items():
        face = "#8fd18f" if i < 2 else "#9ec5fe"
        ax.text(x, y, names.get(i, str(i - 2)), ha="center", va="center", fontsize=9,
                bbox=dict(boxstyle="round,pad=0.4", fc=face, ec="black"))
    ax.text(*out_pos, "$c_{k}$", ha="center", va="center", fontsize=9,
            bbox=dict(boxstyle="round,pad=0.4", fc="#ffd27f", ec="black"))
    ax.set_aspect("equal")
    ax.set_xlim(-0.8, out_pos[0] + 0.8)
    ax.set_ylim(-2.6, 2.6)
    ax.axis("off")
    ax.set_title(title)
    return save_figure(fig, Path(path))


def plot_cells(genotype: Genotype | Mapping[str, Any], out_dir: str | Path, prefix: str = "cell") -> list[Path]:
    """``cell_normal.png`` and ``cell_reduce.png`` for a genotype (a ``Genotype`` or its
    dict): with graphviz (the package and its ``dot`` binary) when it works, else with
    matplotlib."""
    from nas.models.genotypes import genotype_from_dict

    g = genotype_from_dict(genotype) if isinstance(genotype, Mapping) else genotype
    out = Path(out_dir)
    paths = []
    for kind in ("normal", "reduce"):
        p = out / f"{prefix}_{kind}.png"
        cell, concat = getattr(g, kind), getattr(g, f"{kind}_concat")
        try:
            paths.append(_graphviz_cell(cell, concat, p))
            continue
        except Exception:  # noqa: BLE001 - no graphviz package, no dot binary, or dot failed: matplotlib
            pass
        r = plot_cell(cell, concat, p, title=f"{kind} cell")
        if r is not None:
            paths.append(r)
    return paths


def _graphviz_cell(cell: Sequence[tuple[str, int]], concat: Sequence[int], path: Path) -> Path:
    """A cell drawn by graphviz (the ``graphviz`` package and its ``dot`` binary); raises
    when graphviz is unavailable, and :func:`plot_cells` falls back to matplotlib."""
    import graphviz

    g = graphviz.Digraph(format="png", edge_attr={"fontsize": "11"},
                         node_attr={"style": "filled", "shape": "rect", "align": "center", "fontsize": "12",
                                    "height": "0.5", "width": "0.5", "penwidth": "2"}, engine="dot")
    g.body.extend(["rankdir=LR"])
    g.node("c_{k-2}", fillcolor="darkseagreen2")
    g.node("c_{k-1}", fillcolor="darkseagreen2")
    steps = len(cell) // 2
    for i in range(steps):
        g.node(str(i), fillcolor="lightblue")
    for k, (op, j) in enumerate(cell):
        src = "c_{k-2}" if j == 0 else "c_{k-1}" if j == 1 else str(j - 2)
        g.edge(src, str(k // 2), label=op, fillcolor="gray")
    g.node("c_{k}", fillcolor="palegoldenrod")
    for j in concat:
        g.edge(str(j - 2), "c_{k}", fillcolor="gray")
    out = Path(path)
    g.render(str(out.with_suffix("")), cleanup=True)
    return out


# ----------------------------------------------------------------------------- all of it
def write_report(out_dir: str | Path, *, model: nn.Module | None = None, metrics_rows: Sequence[Mapping] = (),
                 images: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                 probs: torch.Tensor | None = None, classes: Sequence[str] = (), mean: float = 0.5,
                 std: float = 0.25, crop: int = 44, genotype: Genotype | Mapping[str, Any] | None = None, split_name: str = "PrivateTest",
                 seed: int = 0) -> list[Path]:
    """Write every plot that the inputs allow into ``out_dir``; return the paths.
    Never raises for a plotting problem: a failed plot becomes a notice."""
    if not have_matplotlib():
        return []
    out = Path(out_dir)
    written: list[Path] = []

    def attempt(name: str, fn, *a, **kw):
        try:
            r = fn(*a, **kw)
        except Exception as e:  # noqa: BLE001 - reports are a by-product; never lose a run to them
            print(f"notice: could not draw {name}: {type(e).__name__}: {' '.join(str(e).split())[:120]}",
                  file=sys.stderr)
            return
        if isinstance(r, list):
            written.extend(r)
        elif r is not None:
            written.append(r)

    if metrics_rows:
        attempt("curves", plot_curves, metrics_rows, out / "curves.png")
    if probs is not None and labels is not None and len(classes):
        from nas.engine.evaluate import confusion_matrix

        preds = probs.argmax(1).cpu()
        cm = confusion_matrix(preds, labels.cpu(), len(classes))
        attempt("confusion matrix", plot_confusion, cm, classes, out / "confusion.png",
                title=f"confusion matrix ({split_name})")
        if images is not None:
            attempt("misclassified panel", plot_misclassified, images, labels, preds, classes,
                    out / "misclassified.png", seed=seed)
    if model is not None and images is not None and labels is not None and len(classes):
        attempt("saliency", plot_saliency, model, images, labels, classes, out / "saliency.png",
                mean=mean, std=std, crop=crop, seed=seed)
    if genotype is not None:
        attempt("cells", plot_cells, genotype, out)
    return written
