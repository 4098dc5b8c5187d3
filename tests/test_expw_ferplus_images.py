"""ExpW and the FER+ image folders on small fixtures in their real layouts: counts per split and
class, the label map by name, the photo-level split, FER+'s majority/soft rules computed by
hand, and each bad-input case (one line naming the file and line)."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nas.data import FER_CLASSES, SPLITS, detect_format, load_dataset
from nas.data.labelmap import NATIVE, native_lookup
from nas.data.ferplus import FERPLUS_COLUMNS, FERPLUS_TO_FER
from nas.runtime.errors import FerNasError

LEVEL = {c: 20 + 30 * i for i, c in enumerate(FER_CLASSES)}


# ----------------------------------------------------------------------------- ExpW
def _expw(root: Path, photos: int = 24, seed: int = 0) -> tuple[Path, list[tuple[str, int, float]]]:
    """Colour JPEG photos of odd sizes with 1-3 faces each; a face's box holds its class's
    grey level (the image is white elsewhere). Returns the root and (photo, class, confidence)
    per face, in label.lst order."""
    rng = np.random.default_rng(seed)
    lines, faces = [], []
    (root / "image" / "origin").mkdir(parents=True)
    (root / "label").mkdir(parents=True)
    for k in range(photos):
        w, h = int(rng.integers(150, 230)), int(rng.integers(70, 110))
        a = np.full((h, w, 3), 255, np.uint8)
        name = f"photo_{k:03d}.jpg"
        for face_id in range(1 + k % 3):
            cls = int(rng.integers(7)) if k >= 7 else k  # every class at least once
            left, top, side = 5 + 50 * face_id, int(rng.integers(2, h - 62)), 45
            a[top:top + side, left:left + side] = LEVEL[FER_CLASSES[cls]]
            conf = round(float(rng.uniform(20, 90)), 2)
            lines.append(f"{name} {face_id} {top} {left} {left + side} {top + side} {conf} {cls}")
            faces.append((name, cls, conf))
        Image.fromarray(a).save(root / "image" / "origin" / name, quality=95)
    (root / "label" / "label.lst").write_text("\n".join(lines) + "\n")
    return root, faces


def test_expw_reads_boxes_maps_labels_and_splits_by_photo(tmp_path: Path) -> None:
    root, faces = _expw(tmp_path / "ExpW")
    assert detect_format(root) == "expw"
    d = load_dataset(root, val_fraction=0.2, cache_dir="off")
    assert d.format == "expw" and d.image_size == (48, 48) and len(d) == len(faces)
    assert native_lookup("expw", FER_CLASSES) == {i: i for i in range(7)}
    # the crop is the box: the face's mean grey is its class's level (the label map by content)
    means = d.images.float().mean(dim=(1, 2, 3))
    want = torch.tensor([LEVEL[FER_CLASSES[int(y)]] for y in d.labels], dtype=torch.float32)
    assert torch.allclose(means, want, atol=4.0)
    assert torch.bincount(d.labels, minlength=7).tolist() == np.bincount([c for _, c, _ in faces], minlength=7).tolist()
    # every split has faces, and no photo has faces on both sides of the test split
    split_of: dict[str, set[int]] = {}
    for f, s in zip(d.meta["files"], d.split.tolist()):
        split_of.setdefault(f, set()).add(s == SPLITS.index("PrivateTest"))
    assert all(len(v) == 1 for v in split_of.values())
    assert all((d.split == k).any() for k in range(3))
    assert d.meta["confidence"] == [c for _, _, c in faces]
    assert "photo" in d.summary()["split_from"]


def test_expw_min_confidence_drops_and_counts(tmp_path: Path) -> None:
    root, faces = _expw(tmp_path / "ExpW")
    d = load_dataset(root, min_confidence=50.0, cache_dir="off")
    assert len(d) == sum(c >= 50.0 for _, _, c in faces)
    assert d.meta["low_confidence_dropped"] == sum(c < 50.0 for _, _, c in faces) > 0
    with pytest.raises(FerNasError, match="--min_confidence applies to ExpW only"):
        load_dataset(root, "rafdb", min_confidence=1.0)


@pytest.mark.parametrize("bad, message", [
    ("photo_000.jpg 0 1 2 3 40", "line 2: expected 8 fields"),
    ("photo_000.jpg 0 1 2 50 40 33.0 7", "line 2: expression 7 is not one of ExpW's 0-6"),
    ("photo_000.jpg 0 1 2 50 40 high 3", "line 2: bad number"),
    ("photo_000.jpg 0 40 50 20 80 33.0 3", "line 2: empty face box"),
    ("missing.jpg 0 1 2 50 40 33.0 3", "line 2: missing.jpg: missing image"),
    ("photo_000.jpg 0 500 600 700 800 33.0 3", "line 2: photo_000.jpg: face box .* lies outside"),
])
def test_expw_bad_lines_are_one_line_errors_or_skipped(tmp_path: Path, bad: str, message: str) -> None:
    root, faces = _expw(tmp_path / "ExpW", photos=15)
    lst = root / "label" / "label.lst"
    lines = lst.read_text().splitlines()
    lst.write_text("\n".join([lines[0], bad, *lines[1:]]) + "\n")
    with pytest.raises(FerNasError, match=message) as e:
        load_dataset(root, cache_dir="off", val_fraction=0.25)
    assert str(lst) in str(e.value) and "\n" not in str(e.value)
    d = load_dataset(root, skip_bad_rows=True, cache_dir="off", val_fraction=0.25)
    assert len(d) == len(faces) and d.skipped == 1


# ----------------------------------------------------------------------------- FER+ folders
# (votes in FERPLUS_COLUMNS order, the majority rule's toolkit label or None, the soft rule's or None)
VOTES = [
    ([0, 10, 0, 0, 0, 0, 0, 0, 0, 0], 3, 3),    # happiness unanimous -> happy
    ([6, 0, 0, 0, 4, 0, 0, 0, 0, 0], 6, 6),     # neutral 6 of 10 > half -> neutral
    ([4, 0, 0, 1, 3, 2, 0, 0, 0, 0], None, 6),  # the single sadness vote is dropped; 4 of 9 is no majority
    ([5, 5, 0, 0, 0, 0, 0, 0, 0, 0], None, 3),  # a tie: no majority; soft argmax takes the first in angry..neutral order
    ([0, 0, 0, 0, 0, 0, 0, 8, 2, 0], None, None),  # contempt: no FER class; no FER vote at all
    ([1, 0, 0, 0, 0, 0, 0, 0, 9, 0], None, 6),  # unknown majority; soft keeps the single neutral vote
    ([0, 0, 7, 0, 0, 0, 3, 0, 0, 0], 5, 5),     # surprise 7 -> surprise
    ([0, 0, 0, 0, 2, 8, 0, 0, 0, 0], 1, 1),     # disgust
    ([0, 0, 0, 0, 9, 0, 0, 0, 1, 0], 0, 0),     # anger -> angry
    ([0, 0, 0, 2, 0, 0, 8, 0, 0, 0], 2, 2),     # fear
    ([0, 0, 0, 9, 0, 0, 0, 0, 0, 1], 4, 4),     # sadness -> sad
]


def _ferplus_images(root: Path, header: bool = False) -> Path:
    k = 0
    for folder in ("FER2013Train", "FER2013Valid", "FER2013Test"):
        d = root / folder
        d.mkdir(parents=True)
        rows = []
        for votes, maj, soft in VOTES:
            name = f"fer{k:07d}.png"
            level = LEVEL[FER_CLASSES[maj if maj is not None else soft if soft is not None else 0]]
            Image.fromarray(np.full((48, 48), level, np.uint8)).save(d / name)
            rows.append([name, "(0, 0, 48, 48)", *votes])
            k += 1
        with (d / "label.csv").open("w", newline="") as f:
            w = csv.writer(f)
            if header:
                w.writerow(["Image name", "face box", *FERPLUS_COLUMNS])
            w.writerows(rows)
    return root


@pytest.mark.parametrize("header", [False, True])
def test_ferplus_folders_majority_and_soft_by_hand(tmp_path: Path, header: bool) -> None:
    root = _ferplus_images(tmp_path / "FERPlus" / "data", header=header)
    assert detect_format(tmp_path / "FERPlus") == "ferplus_images"
    d = load_dataset(tmp_path / "FERPlus")
    want = [m for _, m, _ in VOTES if m is not None]
    assert d.format == "ferplus_images" and d.labels.tolist() == want * 3
    assert d.split.tolist() == [0] * len(want) + [1] * len(want) + [2] * len(want)
    assert d.meta["ferplus"]["dropped"] == {s: len(VOTES) - len(want) for s in SPLITS}
    assert torch.allclose(d.images.float().mean(dim=(1, 2, 3)),
                          torch.tensor([float(LEVEL[FER_CLASSES[y]]) for y in want * 3]))
    # FER+'s own column order is mapped by name: the label map agrees with the vote-column map
    assert native_lookup("ferplus", FER_CLASSES) == {col: fer for fer, col in enumerate(FERPLUS_TO_FER)}
    assert NATIVE["ferplus"][7] == "contempt"
    s = load_dataset(tmp_path / "FERPlus", labels="ferplus_soft")
    want_soft = [sft for _, _, sft in VOTES if sft is not None]
    assert s.labels.tolist() == want_soft * 3
    row = s.soft_labels[2]      # VOTES[2], [4,0,0,1,3,2,...]: 10 FER-class votes, the single one counts too
    assert row.tolist() == pytest.approx([0.3, 0.2, 0.0, 0.0, 0.1, 0.0, 0.4])
    assert torch.allclose(s.soft_labels.sum(1), torch.ones(len(s)))


@pytest.mark.parametrize("edit, message", [
    (lambda rows: rows.__setitem__(2, rows[2][:5]), "line 3: expected an image name and 10 vote counts"),
    (lambda rows: rows[1].__setitem__(4, "x"), r"line 2: 'x' is not a non-negative integer vote count"),
    (lambda rows: rows[0].__setitem__(0, "gone.png"), "line 1: gone.png: missing image"),
])
def test_ferplus_folders_bad_rows(tmp_path: Path, edit, message: str) -> None:
    root = _ferplus_images(tmp_path / "FP")
    label = root / "FER2013Valid" / "label.csv"
    rows = list(csv.reader(label.open()))
    edit(rows)
    with label.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    with pytest.raises(FerNasError, match=message) as e:
        load_dataset(root)
    assert str(label) in str(e.value)
    d = load_dataset(root, skip_bad_rows=True)
    assert d.skipped == 1


def test_ferplus_folders_refuse_a_join_and_a_foreign_header(tmp_path: Path) -> None:
    root = _ferplus_images(tmp_path / "FP")
    with pytest.raises(FerNasError, match="--ferplus joins FER\\+ votes to a FER2013 CSV only"):
        load_dataset(root, ferplus=root / "x.csv")
    (root / "FER2013Test" / "label.csv").write_text("name,a,b\nfer1.png,1,2\n")
    with pytest.raises(FerNasError, match="line 1: not a FER\\+ label file"):
        load_dataset(root)


def test_training_on_the_ferplus_folders_with_soft_labels(tmp_path: Path) -> None:
    """--labels ferplus_soft trains on the folders' vote distributions (no --ferplus needed);
    on a FER2013 CSV without --ferplus the same flag is one line, before any data is read."""
    from tests.cli_util import assert_one_line_error, run_inprocess

    root = _ferplus_images(tmp_path / "FP")
    run = tmp_path / "run"
    proc = run_inprocess("train_searched.py", ["--arch", "cnn_shallow", "--data", root, "--labels", "ferplus_soft",
                                               "--epochs", 1, "--batch_size", 8, "--save", run, "--device", "cpu",
                                               "--plots", "False", "--snapshot_at", ""])
    assert proc.returncode == 0, proc.stderr
    assert (run / "best.pt").exists()
    csv_path = tmp_path / "fer2013.csv"
    csv_path.write_text("emotion,pixels,Usage\n" + "".join(f"{k % 7},{' '.join(['0'] * 2304)},{u}\n"
                                                           for k, u in enumerate(["Training"] * 4 + ["PublicTest",
                                                                                                    "PrivateTest"])))
    proc = run_inprocess("train_searched.py", ["--arch", "cnn_shallow", "--data", csv_path, "--labels", "ferplus_soft",
                                               "--save", tmp_path / "no", "--device", "cpu"])
    assert_one_line_error(proc, "--labels ferplus_soft needs FER+ votes: --ferplus PATH", "or the FER+ image folders")
