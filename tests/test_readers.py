"""Each reader on small files written here in the real format, and the FER+ join."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from nas.data import FER_CLASSES, SPLITS, detect_format, load_dataset, open_data
from nas.data.ck48 import CK48_CLASSES
from tests.fer_files import (FERPLUS_HEADER, random_images, save_png, small_fer2013, write_ck48,
                             write_fer2013_csv, write_jaffe)


def split_sizes(d) -> dict[str, int]:
    return {name: int((d.split == i).sum()) for i, name in enumerate(SPLITS)}


# ---------------------------------------------------------------- FER2013 CSV variants

def test_the_fer2013_writer_writes_kaggles_text(tmp_path):
    """nas.data.fer2013.write_fer2013_csv against the file written by hand: Kaggle's header, a row
    per image, pixels row by row separated by single spaces; a header without pixels is refused."""
    imgs = np.arange(2 * 2 * 3, dtype=np.uint8).reshape(2, 2, 3) * 10
    f = write_fer2013_csv(tmp_path / "a" / "fer2013.csv", [3, 6], ["Training", "PrivateTest"], imgs)
    assert f.read_text() == ("emotion,pixels,Usage\n"
                             "3,0 10 20 30 40 50,Training\n"
                             "6,60 70 80 90 100 110,PrivateTest\n")
    g = write_fer2013_csv(tmp_path / "icml.csv", [3], ["Training"], imgs[:1], header="emotion, Usage, pixels")
    assert g.read_text() == "emotion, Usage, pixels\n3,Training,0 10 20 30 40 50\n"
    with pytest.raises(ValueError, match="pixels"):
        write_fer2013_csv(tmp_path / "x.csv", [3], ["Training"], imgs[:1], header="emotion,Usage")


def test_fer2013_csv_file_folder_and_torchvision_layout(tmp_path):
    labels, usages, imgs = small_fer2013()
    f = write_fer2013_csv(tmp_path / "kaggle" / "fer2013.csv", labels, usages, imgs)
    write_fer2013_csv(tmp_path / "tv" / "fer2013" / "fer2013.csv", labels, usages, imgs)
    for path in (f, f.parent, tmp_path / "tv"):
        assert detect_format(path) == "fer2013_csv"
        d = load_dataset(path)
        assert d.images.dtype == torch.uint8 and d.images.shape == (28, 1, 48, 48)
        assert np.array_equal(d.images[:, 0].numpy(), imgs)
        assert d.labels.tolist() == labels
        assert split_sizes(d) == {"Training": 14, "PublicTest": 7, "PrivateTest": 7}
        assert d.classes == list(FER_CLASSES) and d.skipped == 0 and d.meta["variant"] == "fer2013.csv"


def test_icml_variant_with_leading_space_header(tmp_path):
    labels, usages, imgs = small_fer2013(seed=1)
    write_fer2013_csv(tmp_path / "icml_face_data.csv", labels, usages, imgs, header="emotion, Usage, pixels")
    d = load_dataset(tmp_path)
    assert d.meta["variant"] == "icml_face_data.csv"
    assert np.array_equal(d.images[:, 0].numpy(), imgs) and d.labels.tolist() == labels
    assert split_sizes(d) == {"Training": 14, "PublicTest": 7, "PrivateTest": 7}


def test_fer2013_csv_tolerates_crlf_quotes_and_extra_spaces(tmp_path):
    labels, usages, imgs = small_fer2013(seed=2)
    rows = ["emotion,pixels,Usage"]
    for y, u, im in zip(labels, usages, imgs):
        rows.append(f'{y}, "{"  ".join(map(str, im.ravel().tolist()))} " ,{u}')
    (tmp_path / "fer2013.csv").write_bytes(("\r\n".join(rows) + "\r\n\r\n").encode())
    d = load_dataset(tmp_path / "fer2013.csv")
    assert np.array_equal(d.images[:, 0].numpy(), imgs) and d.labels.tolist() == labels


def test_train_and_labelled_test_csv(tmp_path):
    labels, _, imgs = small_fer2013(seed=3)
    write_fer2013_csv(tmp_path / "train.csv", labels[:14], [""] * 14, imgs[:14], header="emotion,pixels")
    write_fer2013_csv(tmp_path / "test.csv", labels[14:], [""] * 14, imgs[14:], header="emotion,pixels")
    d = load_dataset(tmp_path / "train.csv")
    assert d.meta["variant"] == "train.csv+test.csv"
    # Kaggle order: train rows, then test rows whose first half is PublicTest
    assert d.split.tolist() == [0] * 14 + [1] * 7 + [2] * 7
    assert np.array_equal(d.images[:, 0].numpy(), imgs) and d.labels.tolist() == labels


def test_unlabelled_test_csv_is_skipped_with_a_stratified_holdout(tmp_path, capsys):
    labels = [i % 7 for i in range(70)]
    imgs = random_images(70, seed=4)
    write_fer2013_csv(tmp_path / "train.csv", labels, [""] * 70, imgs, header="emotion,pixels")
    write_fer2013_csv(tmp_path / "test.csv", [0] * 5, [""] * 5, random_images(5), header="pixels")
    d = load_dataset(tmp_path, val_fraction=0.2, seed=5)
    err = capsys.readouterr().err
    assert "test.csv" in err and "cannot be evaluated" in err and len(err.strip().splitlines()) == 1
    assert "holdout" in d.meta and len(d) == 70
    sizes = split_sizes(d)
    assert sizes == {"Training": 56, "PublicTest": 14, "PrivateTest": 0}
    # stratified: 2 of the 10 samples of every class are held out
    assert torch.bincount(d.labels[d.split == 1], minlength=7).tolist() == [2] * 7
    again = load_dataset(tmp_path, val_fraction=0.2, seed=5)
    other = load_dataset(tmp_path, val_fraction=0.2, seed=6)
    assert torch.equal(again.split, d.split) and not torch.equal(other.split, d.split)


def test_csv_clean_label_sidecar(tmp_path):
    labels, usages, imgs = small_fer2013()
    write_fer2013_csv(tmp_path / "fer2013.csv", labels, usages, imgs)
    clean = [(y + 1) % 7 for y in labels]
    (tmp_path / "clean_labels.csv").write_text(
        "file,clean_label\n" + "".join(f"{i},{c}\n" for i, c in enumerate(clean)))
    d = load_dataset(tmp_path)
    assert d.clean_labels.tolist() == clean


def test_skip_bad_rows_keeps_the_good_rows_in_order(tmp_path):
    labels, usages, imgs = small_fer2013()
    f = write_fer2013_csv(tmp_path / "fer2013.csv", labels, usages, imgs)
    lines = f.read_text().splitlines()
    lines[3] = lines[3].replace(",", ",300 ", 1)  # data row 2: 2305 values
    lines[5] = "9" + lines[5][1:]  # data row 4: label 9
    f.write_text("\n".join(lines) + "\n")
    d = load_dataset(f, skip_bad_rows=True)
    keep = [i for i in range(28) if i not in (2, 4)]
    assert d.skipped == 2 and len(d) == 26
    assert np.array_equal(d.images[:, 0].numpy(), imgs[keep])
    assert d.labels.tolist() == [labels[i] for i in keep]


# ---------------------------------------------------------------- FER2013 image folders

def _fer_folders(root: Path, names_by_part: dict[str, list[tuple[str, str]]]) -> dict[str, np.ndarray]:
    imgs = random_images(sum(len(v) for v in names_by_part.values()), seed=8)
    out, k = {}, 0
    for part, items in names_by_part.items():
        for cls, name in items:
            save_png(root / part / cls / name, imgs[k])
            out[f"{part}/{cls}/{name}"] = imgs[k]
            k += 1
    return out


def test_fer2013_folders_recover_splits_from_file_names(tmp_path):
    written = _fer_folders(tmp_path, {
        "train": [("angry", "Training_10.jpg".replace(".jpg", ".png")), ("happy", "Training_3.png"),
                  ("neutral", "Training_7.png")],
        "test": [("happy", "PublicTest_1.png"), ("sad", "PrivateTest_2.png"), ("fear", "PublicTest_5.png")],
    })
    (tmp_path / "train" / "happy" / ".DS_Store").write_bytes(b"\0\1junk")
    assert detect_format(tmp_path) == "fer2013_folders"
    d = load_dataset(tmp_path)
    got = dict(zip(d.meta["files"], zip(d.split.tolist(), d.labels.tolist())))
    assert got == {
        "train/angry/Training_10.png": (0, 0), "train/happy/Training_3.png": (0, 3),
        "train/neutral/Training_7.png": (0, 6), "test/fear/PublicTest_5.png": (1, 2),
        "test/happy/PublicTest_1.png": (1, 3), "test/sad/PrivateTest_2.png": (2, 4)}
    for i, key in enumerate(d.meta["files"]):
        assert np.array_equal(d.images[i, 0].numpy(), written[key])
    assert d.skipped == 1  # the .DS_Store


def test_fer2013_folders_without_prefixes_hold_out_a_stratified_public_test(tmp_path):
    items = [(c, f"im{k}.png") for c in FER_CLASSES for k in range(10)]
    _fer_folders(tmp_path, {"train": items, "test": items[:14]})
    d = load_dataset(tmp_path, val_fraction=0.3, seed=1)
    assert split_sizes(d) == {"Training": 49, "PublicTest": 21, "PrivateTest": 14}
    assert torch.bincount(d.labels[d.split == 1], minlength=7).tolist() == [3] * 7
    assert all(f.startswith("test/") for f, s in zip(d.meta["files"], d.split.tolist()) if s == 2)
    assert torch.equal(load_dataset(tmp_path, val_fraction=0.3, seed=1).split, d.split)


# ---------------------------------------------------------------- CK+48, JAFFE, generic folders

def test_ck48_contempt_is_index_6_and_subjects_parse(tmp_path):
    written = write_ck48(tmp_path, {
        "anger": ["S010_004_00000017.png", "S011_001_00000010.png"], "contempt": ["S138_008_00000007.png"],
        "sadness": ["S010_002_00000014.png"], "surprise": ["S005_001_00000009.png"]})
    assert detect_format(tmp_path) == "ck48"
    d = load_dataset(tmp_path)
    assert d.classes == list(CK48_CLASSES) and d.classes[6] == "contempt"
    got = dict(zip(d.meta["files"], zip(d.labels.tolist(), d.subjects)))
    assert got == {"anger/S010_004_00000017.png": (0, "S010"), "anger/S011_001_00000010.png": (0, "S011"),
                   "contempt/S138_008_00000007.png": (6, "S138"), "sadness/S010_002_00000014.png": (4, "S010"),
                   "surprise/S005_001_00000009.png": (5, "S005")}
    assert (d.split == 0).all()
    for i, key in enumerate(d.meta["files"]):
        assert np.array_equal(d.images[i, 0].numpy(), written[key])


JAFFE_NAMES = ["KA.AN1.39.tiff", "KA.NE2.27.tiff", "KL.SA1.158.tiff", "YM.HA3.54.tiff", "NA.SU1.79.tiff",
               "TM.DI2.194.tiff", "UY.FE1.132.tiff"]


def test_jaffe_codes_map_by_name_and_the_face_box_is_cropped(tmp_path):
    write_jaffe(tmp_path, JAFFE_NAMES)
    (tmp_path / "README").write_text("JAFFE")
    assert detect_format(tmp_path) == "jaffe"
    d = load_dataset(tmp_path)
    by_file = {f: (y, s) for f, y, s in zip(d.meta["files"], d.labels.tolist(), d.subjects)}
    # by name, not alphabetically: NE is neutral (6), SA sad (4)
    assert by_file == {"KA.AN1.39.tiff": (0, "KA"), "KA.NE2.27.tiff": (6, "KA"), "KL.SA1.158.tiff": (4, "KL"),
                       "YM.HA3.54.tiff": (3, "YM"), "NA.SU1.79.tiff": (5, "NA"), "TM.DI2.194.tiff": (1, "TM"),
                       "UY.FE1.132.tiff": (2, "UY")}
    assert d.images.shape == (7, 1, 48, 48) and d.skipped == 1
    for i, f in enumerate(d.meta["files"]):  # the box is flat grey, the noise outside must not leak in
        assert (d.images[i] == 10 * JAFFE_NAMES.index(f) + 5).all()
    # a custom box reaching into the noise is no longer flat
    d2 = load_dataset(tmp_path, jaffe_crop=(0, 0, 100, 100))
    assert d2.meta["crop"] == [0, 0, 100, 100] and d2.images.float().std() > 20


def test_jaffe_crop_scales_with_image_size(tmp_path):
    write_jaffe(tmp_path, JAFFE_NAMES[:2], size=128)
    d = load_dataset(tmp_path)
    assert d.meta["crop"] == [24, 24, 80, 80]
    assert (d.images[0] == 5).all() and (d.images[1] == 15).all()


def test_generic_folder_sorted_or_explicit_classes_and_sidecar(tmp_path):
    imgs = random_images(4, seed=9, size=32)
    for k, (cls, name) in enumerate([("pos", "a.png"), ("neg", "b.png"), ("neg", "c.png"), ("mid", "d.png")]):
        save_png(tmp_path / cls / name, imgs[k])
    (tmp_path / "neg" / "notes.txt").write_text("x")
    (tmp_path / "clean_labels.csv").write_text("file,clean_label\nneg/b.png,1\npos/a.png,2\n")
    assert detect_format(tmp_path) == "folder"
    d = load_dataset(tmp_path)
    assert d.classes == ["mid", "neg", "pos"] and d.image_size == (32, 32) and d.skipped == 1
    assert dict(zip(d.meta["files"], d.labels.tolist())) == {"mid/d.png": 0, "neg/b.png": 1, "neg/c.png": 1,
                                                              "pos/a.png": 2}
    assert dict(zip(d.meta["files"], d.clean_labels.tolist())) == {"mid/d.png": -1, "neg/b.png": 1,
                                                                    "neg/c.png": -1, "pos/a.png": 2}
    d2 = load_dataset(tmp_path, classes=["pos", "neg", "mid", "other"])
    assert dict(zip(d2.meta["files"], d2.labels.tolist()))["pos/a.png"] == 0
    assert d2.classes == ["pos", "neg", "mid", "other"]


def test_open_data_dispatch(tmp_path):
    labels, usages, imgs = small_fer2013()
    write_fer2013_csv(tmp_path / "fer2013.csv", labels, usages, imgs)
    assert open_data("fer2013", tmp_path).format == "fer2013_csv"
    assert open_data("auto", tmp_path / "fer2013.csv").format == "fer2013_csv"
    write_ck48(tmp_path / "ck", {"anger": ["S010_004_00000017.png"]})
    assert open_data("ck48", tmp_path / "ck").format == "ck48"
    assert open_data("folder", tmp_path / "ck").classes == ["anger"]


# ---------------------------------------------------------------- FER+ join

def _ferplus_rows(votes_and_usage):
    return FERPLUS_HEADER + "\n" + "".join(f"{u},fer{i:07d}.png,{','.join(map(str, v))}\n"
                                           for i, (u, v) in enumerate(votes_and_usage))


# FER+ columns: neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF
HAND_VOTES = [
    ("Training", [4, 0, 0, 1, 3, 2, 0, 0, 0, 0], None),       # singles dropped: 4 of 9 is no majority
    ("Training", [6, 0, 1, 1, 0, 0, 0, 0, 2, 0], 6),          # 6 of 8 -> neutral
    ("Training", [0, 10, 0, 0, 0, 0, 0, 0, 0, 0], 3),         # happy
    ("Training", [0, 0, 6, 0, 0, 0, 4, 0, 0, 0], 5),          # 6 of 10 -> surprise
    ("Training", [0, 0, 0, 0, 0, 0, 0, 8, 2, 0], None),       # contempt majority: folded out
    ("PublicTest", [0, 0, 0, 0, 0, 0, 0, 0, 0, 10], None),    # not a face
    ("PublicTest", [0, 0, 0, 2, 5, 3, 0, 0, 0, 0], None),     # 5 of 10 is not > 50 %
    ("PublicTest", [0, 0, 0, 0, 1, 0, 8, 1, 0, 0], 2),        # fear
    ("PrivateTest", [1, 0, 0, 0, 0, 0, 0, 0, 7, 2], None),    # unknown majority
    ("PrivateTest", [0, 0, 0, 0, 0, 3, 0, 0, 0, 0], 1),       # disgust
]


def _hand_case(tmp_path):
    n = len(HAND_VOTES)
    usages = [u for u, _, _ in HAND_VOTES]
    fer_labels = [i % 7 for i in range(n)]
    imgs = random_images(n, seed=10)
    write_fer2013_csv(tmp_path / "fer2013.csv", fer_labels, usages, imgs)
    (tmp_path / "fer2013new.csv").write_text(_ferplus_rows([(u, v) for u, v, _ in HAND_VOTES]))
    return fer_labels, imgs


def test_ferplus_majority_rule_by_hand(tmp_path):
    _, imgs = _hand_case(tmp_path)
    d = load_dataset(tmp_path, ferplus=tmp_path / "fer2013new.csv", labels="ferplus_majority")
    keep = [i for i, (_, _, y) in enumerate(HAND_VOTES) if y is not None]
    assert d.labels.tolist() == [HAND_VOTES[i][2] for i in keep]
    assert np.array_equal(d.images[:, 0].numpy(), imgs[keep])
    assert d.split.tolist() == [SPLITS.index(HAND_VOTES[i][0]) for i in keep]
    assert d.meta["ferplus"]["dropped"] == len(HAND_VOTES) - len(keep)
    # soft labels stay filled: row 1 (6 neutral, 1 surprise, 1 sad; the unknown votes left out) -> 6/8, 1/8, 1/8
    assert torch.allclose(d.soft_labels[0], torch.tensor([0, 0, 0, 0, 1 / 8, 1 / 8, 6 / 8]))


def test_ferplus_soft_and_fer_labels(tmp_path):
    fer_labels, _ = _hand_case(tmp_path)
    soft = load_dataset(tmp_path, ferplus=tmp_path / "fer2013new.csv", labels="ferplus_soft")
    # rows without any FER-class vote (contempt+unknown, NF) are dropped
    assert len(soft) == len(HAND_VOTES) - 2
    assert torch.allclose(soft.soft_labels.sum(1), torch.ones(len(soft)))
    # row 0: anger 3, disgust 2, sad 1, neutral 4 of 10
    assert torch.allclose(soft.soft_labels[0], torch.tensor([0.3, 0.2, 0, 0, 0.1, 0, 0.4]))
    assert soft.labels[0] == 6
    fer = load_dataset(tmp_path, ferplus=tmp_path / "fer2013new.csv", labels="fer")
    assert fer.labels.tolist() == fer_labels and fer.soft_labels.shape == (len(HAND_VOTES), 7)
    assert fer.soft_labels[5].tolist() == torch.eye(7)[fer_labels[5]].tolist()  # NF row: falls back to FER label


FERPLUS = Path(__file__).resolve().parents[2] / "shared/data/ferplus/fer2013new.csv"


def _reference_majority(votes: list[int]) -> int | None:
    """FER+'s rule written out plainly; returns the FER+ column of the majority or None."""
    v = [0 if x <= 1 else x for x in votes]
    total, top = sum(v), max(v)
    if top > 0.5 * total:
        return v.index(top)
    return None


@pytest.mark.skipif(not FERPLUS.is_file(), reason=f"real FER+ votes not found at {FERPLUS}")
def test_ferplus_join_on_the_real_file(tmp_path):
    lines = FERPLUS.read_text().splitlines()[1:]
    usages = [ln.split(",")[0] for ln in lines]
    votes = [list(map(int, ln.split(",")[2:])) for ln in lines]
    assert [usages.count(s) for s in SPLITS] == [28709, 3589, 3589]
    fer_col = {4: 0, 5: 1, 6: 2, 1: 3, 3: 4, 2: 5, 0: 6}  # FER+ column -> FER2013 label; 7..9 dropped
    ref = [fer_col.get(_reference_majority(v)) for v in votes]
    surviving = {s: sum(1 for u, y in zip(usages, ref) if u == s and y is not None) for s in SPLITS}
    # a full-size fer2013.csv with the same 35,887 rows (40 images repeated, label = row % 7),
    # which also runs the bulk pixel parser at full size; one-digit pixels keep the file small
    base = random_images(40, seed=7) % 10
    texts = [" ".join(map(str, im.ravel().tolist())) for im in base]
    (tmp_path / "fer2013.csv").write_text(
        "emotion,pixels,Usage\n" + "".join(f"{i % 7},{texts[i % 40]},{u}\n" for i, u in enumerate(usages)))
    d = load_dataset(tmp_path, ferplus=FERPLUS, labels="ferplus_majority")
    assert split_sizes(d) == surviving
    kept = [i for i, y in enumerate(ref) if y is not None]
    assert d.labels.tolist() == [ref[i] for i in kept]
    assert np.array_equal(d.images[:, 0].numpy(), base[np.array(kept) % 40])
    assert sum(surviving.values()) == 31264, surviving  # the figure reported for this file
    print(f"FER+ majority rule: {surviving} survive, {sum(surviving.values())} of 35887 rows")


# ---------------------------------------------------------------- SynthFER read back by the real readers

def test_synthfer_csv_and_folder_exports_read_back_alike(tmp_path, monkeypatch):
    pytest.importorskip("nas.data.synthfer")
    monkeypatch.setenv("FERNAS_CACHE", str(tmp_path))
    csv = open_data("synthfer", size=21, seed=3, noise=0.2, synth_format="fer2013")
    folders = open_data("synthfer", size=21, seed=3, noise=0.2, synth_format="folder")
    assert (csv.format, folders.format) == ("fer2013_csv", "fer2013_folders")
    assert csv.clean_labels is not None and (csv.clean_labels >= 0).all()
    assert (csv.labels != csv.clean_labels).any()  # label noise is there, and only in Training
    assert (csv.labels == csv.clean_labels)[csv.split > 0].all()

    def rows(d):
        return sorted(zip(map(bytes, d.images.flatten(1).numpy()), d.labels.tolist(), d.clean_labels.tolist(),
                          d.split.tolist()))
    assert rows(csv) == rows(folders)
