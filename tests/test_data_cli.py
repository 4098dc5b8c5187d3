"""``python -m nas.data inspect``: one JSON object with the right counts for every format."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from nas.runtime.cli import run
from nas.apps.inspect import get_args_parser, main
from tests.fer_files import (FERPLUS_HEADER, random_images, save_png, small_fer2013, write_ck48,
                             write_fer2013_csv, write_jaffe)

ROOT = Path(__file__).resolve().parents[1]


def inspect_json(capsys, *args) -> dict:
    capsys.readouterr()
    run(main, get_args_parser(), [*map(str, args)])
    out = capsys.readouterr().out
    assert len(out.strip().splitlines()) == 1  # one JSON object on one line
    return json.loads(out)


def test_inspect_fer2013_csv_as_a_user_runs_it(tmp_path):
    labels, usages, imgs = small_fer2013()
    write_fer2013_csv(tmp_path / "fer2013.csv", labels, usages, imgs)
    proc = subprocess.run([sys.executable, "-m", "nas.data", "inspect", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["format"] == "fer2013_csv" and out["variant"] == "fer2013.csv"
    assert out["image_size"] == [48, 48] and out["num_samples"] == 28
    assert out["counts"]["Training"] == {"total": 14, **{c: 2 for c in out["classes"]}}
    assert out["counts"]["PublicTest"]["total"] == 7 and out["counts"]["PrivateTest"]["happy"] == 1
    assert out["per_class"] == {c: 4 for c in out["classes"]}
    assert out["subjects"] is None and out["skipped"] == 0
    assert out["soft_labels"] is False and out["clean_labels"] is False


def test_inspect_ferplus_join_and_clean_labels(tmp_path, capsys):
    labels, usages, imgs = small_fer2013()
    write_fer2013_csv(tmp_path / "fer2013.csv", labels, usages, imgs)
    happy, nf = "0,10,0,0,0,0,0,0,0,0", "0,0,0,0,0,0,0,0,0,10"
    (tmp_path / "fer2013new.csv").write_text(
        FERPLUS_HEADER + "\n" + "".join(f"{u},x.png,{nf if i % 4 == 0 else happy}\n" for i, u in enumerate(usages)))
    (tmp_path / "clean_labels.csv").write_text("file,clean_label\n" + "".join(f"{i},{y}\n" for i, y in enumerate(labels)))
    out = inspect_json(capsys, tmp_path, "--ferplus", tmp_path / "fer2013new.csv", "--labels", "ferplus_majority")
    assert out["num_samples"] == 21 and out["per_class"]["happy"] == 21
    assert out["ferplus"]["dropped"] == 7 and out["ferplus"]["labels"] == "ferplus_majority"
    assert out["soft_labels"] is True and out["clean_labels"] is True


def test_inspect_fer2013_folders(tmp_path, capsys):
    imgs = random_images(9)
    names = [("train", "angry", "a.png"), ("train", "angry", "b.png"), ("train", "happy", "c.png"),
             ("train", "happy", "d.png"), ("train", "sad", "e.png"), ("test", "sad", "f.png"),
             ("test", "happy", "g.png"), ("test", "neutral", "h.png"), ("test", "neutral", "i.png")]
    for img, (part, cls, name) in zip(imgs, names):
        save_png(tmp_path / part / cls / name, img)
    out = inspect_json(capsys, tmp_path, "--val_fraction", "0.5")
    assert out["format"] == "fer2013_folders" and out["num_samples"] == 9
    # per class: angry 2 -> 1 held out, happy 2 -> 1, sad 1 -> round(0.5) = 1 (floor(x + 0.5))
    assert out["counts"]["PublicTest"]["total"] == 3 and out["counts"]["Training"]["total"] == 2
    assert out["counts"]["PrivateTest"] == {"total": 4, "angry": 0, "disgust": 0, "fear": 0, "happy": 1, "sad": 1,
                                            "surprise": 0, "neutral": 2}


def test_inspect_ck48_jaffe_and_folder(tmp_path, capsys):
    write_ck48(tmp_path / "ck", {"anger": ["S010_004_00000017.png", "S011_001_00000003.png"],
                                 "contempt": ["S010_002_00000008.png"], "happy": ["S012_001_00000009.png"]})
    out = inspect_json(capsys, tmp_path / "ck")
    assert out["format"] == "ck48" and out["subjects"] == 3 and out["num_samples"] == 4
    assert out["per_class"] == {"angry": 2, "disgust": 0, "fear": 0, "happy": 1, "sad": 0, "surprise": 0,
                                "contempt": 1}
    assert list(out["counts"]) == ["Training"]
    write_jaffe(tmp_path / "jaffe", ["KA.AN1.39.tiff", "KL.NE1.40.tiff", "KL.NE2.41.tiff"])
    out = inspect_json(capsys, tmp_path / "jaffe")
    assert out["format"] == "jaffe" and out["subjects"] == 2 and out["image_size"] == [48, 48]
    assert out["per_class"]["neutral"] == 2 and out["per_class"]["angry"] == 1 and out["crop"] == [48, 48, 160, 160]
    for cls, k in (("b", 2), ("a", 1)):
        for i in range(k):
            save_png(tmp_path / "gen" / cls / f"{i}.png", random_images(1, size=32)[0])
    out = inspect_json(capsys, tmp_path / "gen", "--classes", "b,a")
    assert out["format"] == "folder" and out["classes"] == ["b", "a"] and out["per_class"] == {"b": 2, "a": 1}
    assert out["image_size"] == [32, 32]
