"""RAF-DB and AffectNet readers on small fixtures in each real layout: counts per split and
class, the label map of every class by name, colour to grey, face-box crops, and bad input."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nas.data import FER_CLASSES, detect_format, load_dataset
from nas.data.labelmap import CANONICAL, NATIVE, canonical, label_map_rows, native_lookup

# every toolkit class gets its own grey level, so a face read back tells which class its
# file was filed under: the test of the label map
LEVEL = {c: 20 + 28 * i for i, c in enumerate(CANONICAL)}


def _face(path: Path, cls: str, size: tuple[int, int] = (100, 100), box: tuple[int, int, int, int] | None = None,
          colour: bool = True) -> None:
    """A JPEG whose face (the whole image, or ``box``) has ``cls``'s grey level; outside the
    box the image is white."""
    w, h = size
    a = np.full((h, w, 3), 255, np.uint8)
    x, y, bw, bh = box or (0, 0, w, h)
    a[y:y + bh, x:x + bw] = LEVEL[cls]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a if colour else a[..., 0]).save(path, quality=95)


def _rafdb_official(root: Path, per_class: dict[str, tuple[int, int]]) -> Path:
    basic = root / "basic"
    lines = []
    k = 0
    for native, name in NATIVE["rafdb"].items():
        n_train, n_test = per_class[canonical(name)]
        for part, n in (("train", n_train), ("test", n_test)):
            for _ in range(n):
                k += 1
                fname = f"{part}_{k:05d}.jpg"
                _face(basic / "Image" / "aligned" / f"{part}_{k:05d}_aligned.jpg", canonical(name))
                lines.append(f"{fname} {native}")
    (basic / "EmoLabel").mkdir(parents=True)
    (basic / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines) + "\n")
    return root


PER_CLASS = {c: (6 + i, 2 + i % 2) for i, c in enumerate(FER_CLASSES)}


def _check_levels(d, tol: float = 4.0) -> None:
    means = d.images.float().mean(dim=(1, 2, 3))
    want = torch.tensor([LEVEL[d.classes[int(y)]] for y in d.labels], dtype=torch.float32)
    assert torch.allclose(means, want, atol=tol), (means - want).abs().max()


def test_label_map_by_name() -> None:
    # RAF-DB 1..7 = surprise, fear, disgust, happiness, sadness, anger, neutral
    assert native_lookup("rafdb", FER_CLASSES) == {1: 5, 2: 2, 3: 1, 4: 3, 5: 4, 6: 0, 7: 6}
    # AffectNet 0..7 = neutral, happy, sad, surprise, fear, disgust, anger, contempt
    assert native_lookup("affectnet", FER_CLASSES) == {0: 6, 1: 3, 2: 4, 3: 5, 4: 2, 5: 1, 6: 0}
    assert native_lookup("affectnet", CANONICAL)[7] == 7
    assert native_lookup("expw", FER_CLASSES) == {i: i for i in range(7)}
    rows = label_map_rows()
    assert [r["rafdb"] for r in rows][:7] == ["6 anger", "3 disgust", "2 fear", "4 happiness", "5 sadness",
                                              "1 surprise", "7 neutral"]


def test_rafdb_official_layout(tmp_path: Path) -> None:
    root = _rafdb_official(tmp_path / "RAF", PER_CLASS)
    assert detect_format(root) == "rafdb"
    d = load_dataset(root, val_fraction=0.25)
    assert d.format == "rafdb" and d.image_size == (48, 48) and d.classes == list(FER_CLASSES)
    c = d.counts()
    for i, cls in enumerate(FER_CLASSES):
        n_train, n_test = PER_CLASS[cls]
        assert c["PrivateTest"][cls] == n_test
        assert c["Training"][cls] + c["PublicTest"][cls] == n_train
        assert c["PublicTest"][cls] == int(np.floor(n_train * 0.25 + 0.5))
    _check_levels(d)
    # the native index and name stay in the metadata
    native = d.meta["native_labels"]
    assert all(canonical(NATIVE["rafdb"][n]) == d.classes[int(y)] for n, y in zip(native, d.labels))
    assert d.meta["preprocess"]["image_size"] == 48 and "0.299" in d.meta["preprocess"]["grey"]
    # the selection of a split slices the per-sample metadata with it
    test = d.subset("PrivateTest")
    assert len(test.meta["native_labels"]) == len(test) == len(test.meta["files"])
    # same seed, same PublicTest
    assert torch.equal(load_dataset(root, val_fraction=0.25).split, d.split)


def test_rafdb_folders_and_image_size(tmp_path: Path) -> None:
    root = tmp_path / "raf"
    for native, name in NATIVE["rafdb"].items():
        for part, n in (("train", 4), ("test", 2)):
            for k in range(n):
                _face(root / part / str(native) / f"{part}_{native}_{k}.jpg", canonical(name), size=(100, 100))
    assert detect_format(root) == "rafdb"
    d = load_dataset(root, image_size=64, val_fraction=0.25)
    assert d.image_size == (64, 64) and d.counts()["PrivateTest"]["total"] == 14
    _check_levels(d)


def test_colour_to_grey_weights(tmp_path: Path) -> None:
    root = tmp_path / "raf"
    for native in NATIVE["rafdb"]:
        for part in ("train", "train", "test"):
            p = root / part / str(native) / f"{part}_{native}_{len(list((root / part).glob('*/*')))}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.tile(np.array([200, 100, 50], np.uint8), (60, 60, 1))).save(p)
    d = load_dataset(root, val_fraction=0.5)
    # ITU-R 601-2: 0.299*200 + 0.587*100 + 0.114*50 = 124.2
    assert int(d.images.float().mean().round()) == 124


def _affectnet(root: Path, classes_per_part: dict[int, int], extra_rows: list[list[str]] | None = None) -> Path:
    header = ["subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "facial_landmarks",
              "expression", "valence", "arousal"]
    rng = np.random.default_rng(0)
    for part, csv_name in (("train", "training.csv"), ("val", "validation.csv")):
        rows = []
        for native, n in classes_per_part.items():
            for k in range(n):
                w, h = int(rng.integers(90, 160)), int(rng.integers(80, 150))
                bw = int(rng.integers(30, 60))
                box = (int(rng.integers(0, w - bw)), int(rng.integers(0, h - bw)), bw, bw)
                rel = f"{native}/{part}_{native}_{k}.jpg"
                name = canonical(NATIVE["affectnet"][native]) if native in NATIVE["affectnet"] else "neutral"
                _face(root / "Manually_Annotated_Images" / rel, name, size=(w, h), box=box)
                rows.append([rel, *map(str, box), "1.0;2.0", str(native), f"{0.1 * native:.2f}", "-0.2"])
        if extra_rows and part == "train":
            rows += extra_rows
        with (root / csv_name).open("w", newline="") as f:
            csv.writer(f).writerows([header, *rows])
    return root


def test_affectnet_lists_boxes_and_classes(tmp_path: Path) -> None:
    per = {k: 5 for k in range(8)} | {8: 2, 9: 1, 10: 1}  # 8-10 are not expressions
    root = _affectnet(tmp_path / "AffectNet", per)
    assert detect_format(root) == "affectnet"
    d7 = load_dataset(root, val_fraction=0.2)
    assert d7.classes == list(FER_CLASSES)
    assert d7.meta["non_expressions"] == {"none": 4, "uncertain": 2, "no face": 2}
    assert d7.meta["dropped_classes"] == 10  # contempt, train and val
    assert d7.counts()["PrivateTest"]["total"] == 35
    assert d7.counts()["PublicTest"]["total"] == 7
    _check_levels(d7)  # the crop holds only the face box: no white border
    assert d7.meta["valence"][:1] and len(d7.meta["arousal"]) == len(d7)
    d8 = load_dataset(root, classes=["8"])
    assert d8.classes == list(CANONICAL) and d8.counts()["PrivateTest"]["contempt"] == 5
    _check_levels(d8)


def test_affectnet_folders(tmp_path: Path) -> None:
    root = tmp_path / "aff"
    for part in ("train", "val"):
        for name in ("Anger", "happy", "Sadness", "surprise", "fear", "disgust", "neutral", "contempt"):
            for k in range(3):
                _face(root / part / name / f"{k}.png", canonical(name), size=(112, 112))
    assert detect_format(root) == "affectnet"
    d = load_dataset(root, val_fraction=0.34)
    assert d.meta["dropped_classes"] == 6 and d.counts()["PrivateTest"]["total"] == 21
    _check_levels(d)


@pytest.mark.parametrize("case", ["bad_line", "bad_label", "missing", "truncated", "box_outside"])
def test_bad_input_names_file_and_line(tmp_path: Path, case: str, capsys: pytest.CaptureFixture) -> None:
    from nas.apps.inspect import cli

    if case in ("bad_line", "bad_label", "missing", "truncated"):
        root = _rafdb_official(tmp_path / "RAF", PER_CLASS)
        lst = root / "basic" / "EmoLabel" / "list_patition_label.txt"
        lines = lst.read_text().splitlines()
        if case == "bad_line":
            lines[3] = "train_00004.jpg"
        elif case == "bad_label":
            lines[3] = lines[3].split()[0] + " 9"
        elif case == "missing":
            (root / "basic" / "Image" / "aligned" / "train_00004_aligned.jpg").unlink()
        else:
            p = root / "basic" / "Image" / "aligned" / "train_00004_aligned.jpg"
            p.write_bytes(p.read_bytes()[:200])
        lst.write_text("\n".join(lines) + "\n")
        expect = {"bad_line": "line 4: expected 'image_name label', found 1 field(s)",
                  "bad_label": "line 4: label '9' is not one of RAF-DB's 1-7",
                  "missing": "line 4: train_00004_aligned.jpg: missing image",
                  "truncated": "line 4: train_00004_aligned.jpg: cannot decode image"}[case]
    else:
        bad = [["0/huge.jpg", "500", "500", "40", "40", "", "1", "0.1", "0.2"]]
        root = _affectnet(tmp_path / "aff", {k: 5 for k in range(7)}, extra_rows=bad)
        _face(root / "Manually_Annotated_Images" / "0" / "huge.jpg", "neutral", size=(100, 100))
        expect = "line 37: 0/huge.jpg: face box 500,500,40,40 lies outside the 100x100 image"
    with pytest.raises(SystemExit) as e:
        cli([str(root)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expect in err[0] and "Traceback" not in err[0], err
    # --skip_bad_rows reads the rest and counts the bad one
    cli([str(root), "--skip_bad_rows"])
    assert '"skipped": 1' in capsys.readouterr().out


def test_checkpoint_records_preprocess(tmp_path: Path) -> None:
    from nas.engine.evaluate import checkpoint_image_size
    from nas.engine.trainer import Classification, TrainConfig
    from nas.models import build_model
    from nas.runtime.distributed import single_process

    root = _rafdb_official(tmp_path / "RAF", PER_CLASS)
    d = load_dataset(root, image_size=40, val_fraction=0.25)
    obj = Classification(build_model("cnn_shallow"), d, TrainConfig(epochs=1, batch_size=8, crop=36),
                         device=torch.device("cpu"), dist=single_process("cpu"))
    state = obj.state_dict()
    assert state["preprocess"]["image_size"] == 40 and checkpoint_image_size(state) == 40
    assert checkpoint_image_size({}) == 48


@pytest.mark.parametrize("fmt", ["rafdb", "affectnet"])
def test_synthfer_exports_read_back(tmp_path: Path, fmt: str) -> None:
    """A SynthFER export in RAF-DB's or AffectNet's layout reads back with the labels of the
    same faces exported as fer2013.csv (so every class went through the native numbering and
    back by name), and the faces close to the CSV's after colour, JPEG and resizing."""
    from nas.data.synthfer import export

    export(fmt, tmp_path / fmt, size=280, seed=3, noise=0.2)
    export("fer2013", tmp_path / "csv", size=280, seed=3, noise=0.2)
    d, ref = load_dataset(tmp_path / fmt), load_dataset(tmp_path / "csv")
    assert d.format == fmt and len(d) == len(ref) == 280
    assert torch.equal(d.labels, ref.labels) and torch.equal(d.clean_labels, ref.clean_labels)
    assert (d.labels != d.clean_labels).any()  # the flipped labels survive too
    test_ref = ref.split != 0
    assert torch.equal(d.split == 2, test_ref)  # RAF-DB test / AffectNet validation = PublicTest + PrivateTest
    a, b = d.images.float().flatten(1), ref.images.float().flatten(1)
    corr = ((a - a.mean(1, keepdim=True)) * (b - b.mean(1, keepdim=True))).sum(1) / (
        (a - a.mean(1, keepdim=True)).norm(dim=1) * (b - b.mean(1, keepdim=True)).norm(dim=1))
    assert float(corr.min()) > 0.95


def test_decoded_faces_are_cached_and_memory_mapped(tmp_path: Path) -> None:
    import os

    from nas.data.synthfer import export

    root = tmp_path / "raf"
    export("rafdb", root, size=1100, seed=1)
    first = load_dataset(root)
    assert first.meta["cache"].startswith("decoded")
    files = sorted((root / ".fernas_cache").iterdir())
    assert [f.suffix for f in files] == [".json", ".u8"]
    second = load_dataset(root)
    assert second.meta["cache"].startswith("cached")
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    assert torch.equal(first.split, second.split)
    # a changed image is decoded again (the key covers every file's size and mtime)
    img = root / "basic" / "Image" / "aligned" / "train_00001_aligned.jpg"
    st = img.stat()
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert load_dataset(root).meta["cache"].startswith("decoded")
    # elsewhere, or not at all
    assert load_dataset(root, cache_dir=tmp_path / "c").meta["cache"].startswith("decoded")
    assert any((tmp_path / "c").iterdir())
    assert load_dataset(root, cache_dir="off").meta["cache"] == "uncached"


@pytest.mark.slow
def test_parallel_decoding_equals_serial(tmp_path: Path) -> None:
    from nas.data.crops import decode_faces
    from nas.data.synthfer import export

    root = tmp_path / "aff"
    export("affectnet", root, size=4200, seed=2)
    d = load_dataset(root, cache_dir="off")
    paths = [root / "Manually_Annotated_Images" / f for f in
             [r.split(",")[0] for r in (root / "training.csv").read_text().splitlines()[1:]]]
    serial, kept_s = decode_faces(paths, None, 48, workers=1)
    parallel, kept_p = decode_faces(paths, None, 48, workers=2)
    assert kept_s == kept_p == list(range(len(paths))) and torch.equal(serial, parallel)
    assert len(d) == 4200
