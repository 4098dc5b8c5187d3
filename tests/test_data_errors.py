"""Bad input: one line naming the file, the row or image, and the fault; exit status 2 from the CLI."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nas.data import load_dataset
from nas.runtime.errors import FerNasError
from tests.fer_files import FERPLUS_HEADER, random_images, save_png, small_fer2013, write_ck48, write_fer2013_csv

ROOT = Path(__file__).resolve().parents[1]


def inspect(*args: str) -> subprocess.CompletedProcess:
    """``python -m nas.data inspect ARGS`` in a real subprocess (costs a torch import: used sparingly)."""
    return subprocess.run([sys.executable, "-m", "nas.data", "inspect", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def inspect_here(capsys, *args: str) -> subprocess.CompletedProcess:
    """The same CLI entry (``nas.runtime.cli.run`` over the app's parser and main) in this process."""
    from nas.runtime.cli import run
    from nas.apps.inspect import get_args_parser, main

    capsys.readouterr()
    code = 0
    try:
        run(main, get_args_parser(), [*map(str, args)])
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)


def set_pixel(line: str, k: int, text: str) -> str:
    """A fer2013.csv row with pixel ``k`` (1-based) replaced by ``text``."""
    y, pixels, usage = line.split(",")
    values = pixels.split()
    values[k - 1] = text
    return f"{y},{' '.join(values)},{usage}"


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for frag in fragments:
        assert frag in lines[0], (frag, lines[0])
    assert proc.stdout == ""


def fer_csv(tmp_path: Path, edit=None) -> Path:
    """A good small fer2013.csv; ``edit(lines)`` corrupts it (lines[0] is the header)."""
    labels, usages, imgs = small_fer2013()
    f = write_fer2013_csv(tmp_path / "fer2013.csv", labels, usages, imgs)
    if edit is not None:
        lines = f.read_text().splitlines()
        edit(lines)
        f.write_text("\n".join(lines) + "\n")
    return f


def raises(fragments, fn, *args, **kwargs) -> str:
    with pytest.raises(FerNasError) as e:
        fn(*args, **kwargs)
    msg = str(e.value)
    assert "\n" not in msg
    for frag in fragments:
        assert frag in msg, (frag, msg)
    return msg


# ------------------------------------------------------------ through the CLI (exit status 2)

def test_cli_missing_path(tmp_path):
    assert_one_line_error(inspect(tmp_path / "nope"), "nope", "no such file or folder")


def test_cli_unknown_format(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello")
    assert_one_line_error(inspect_here(capsys, tmp_path), str(tmp_path), "unknown format")
    (tmp_path / "data.bin").write_bytes(b"\0\1")
    assert_one_line_error(inspect_here(capsys, tmp_path / "data.bin"), "data.bin", "unknown format")


def test_cli_wrong_header(tmp_path, capsys):
    f = fer_csv(tmp_path, lambda ls: ls.__setitem__(0, "label,pixels,Usage"))
    assert_one_line_error(inspect_here(capsys, f), "fer2013.csv", "line 1", "wrong header")


def test_cli_pixel_count_and_skip_bad_rows(tmp_path, capsys):
    def edit(ls):
        ls[4] = ls[4].replace(",", ",7 ", 1)  # 2305 values on line 5
        ls[9] = ls[9].rsplit(" ", 1)[0] + "," + ls[9].rsplit(",", 1)[1]  # 2303 values on line 10
    f = fer_csv(tmp_path, edit)
    assert_one_line_error(inspect(f), "fer2013.csv", "line 5", "2305 pixel values, expected 2304",
                          "2 bad rows", "--skip_bad_rows")
    ok = inspect_here(capsys, f, "--skip_bad_rows")
    assert ok.returncode == 0, ok.stderr
    out = json.loads(ok.stdout)
    assert out["skipped"] == 2 and out["num_samples"] == 26 and out["format"] == "fer2013_csv"


def test_cli_undecodable_image_and_bad_jaffe_name(tmp_path, capsys):
    root = tmp_path / "ck"
    write_ck48(root, {"anger": ["S010_004_00000017.png"]})
    (root / "anger" / "S011_001_00000002.png").write_bytes(b"not a png at all")
    assert_one_line_error(inspect_here(capsys, root), "S011_001_00000002.png", "cannot decode image")
    jaffe = tmp_path / "jaffe"
    jaffe.mkdir()
    from PIL import Image
    Image.fromarray(random_images(1, size=256)[0]).save(jaffe / "KA.AN1.39.tiff")
    Image.fromarray(random_images(1, size=256)[0]).save(jaffe / "KA_angry_39.tiff")
    assert_one_line_error(inspect_here(capsys, jaffe), "KA_angry_39.tiff", "does not parse")


def test_cli_unknown_class_folder(tmp_path, capsys):
    for part in ("train", "test"):
        save_png(tmp_path / part / "happy" / "a.png", random_images(1)[0])
    save_png(tmp_path / "train" / "contempt" / "b.png", random_images(1)[0])
    assert_one_line_error(inspect_here(capsys, tmp_path), "contempt", "unknown class folder")


def test_cli_bad_flag_value_is_one_line(capsys):
    assert_one_line_error(inspect_here(capsys, "x", "--jaffe_crop", "1,2"), "--jaffe_crop")


# ------------------------------------------------------------ through FerNasError

@pytest.mark.parametrize("edit, fragments", [
    (lambda ls: ls.__setitem__(3, set_pixel(ls[3], 2, "12.5")), ["line 4", "pixel 2 is '12.5'", "not an integer"]),
    (lambda ls: ls.__setitem__(3, set_pixel(ls[3], 9, "-3")), ["line 4", "pixel 9 is '-3'", "not an integer"]),
    (lambda ls: ls.__setitem__(3, set_pixel(ls[3], 5, "a7")), ["line 4", "pixel 5 is 'a7'", "not an integer"]),
    (lambda ls: ls.__setitem__(6, set_pixel(ls[6], 1, "256")), ["line 7", "pixel 1 is 256", "outside 0-255"]),
    (lambda ls: ls.__setitem__(6, set_pixel(ls[6], 2304, "1000")), ["line 7", "pixel 2304 is 1000", "outside"]),
    (lambda ls: ls.__setitem__(2, "7" + ls[2][1:]), ["line 3", "emotion 7 outside 0-6"]),
    (lambda ls: ls.__setitem__(2, "x" + ls[2][1:]), ["line 3", "emotion 'x' is not an integer"]),
    (lambda ls: ls.__setitem__(8, ls[8].rsplit(",", 1)[0] + ",Validation"), ["line 9", "unknown Usage 'Validation'"]),
    (lambda ls: ls.__setitem__(5, ls[5] + ",extra"), ["line 6", "expected 3 fields, found 4"]),
    (lambda ls: ls.insert(5, ""), ["line 6", "empty line"]),
])
def test_bad_rows(tmp_path, edit, fragments):
    f = fer_csv(tmp_path, edit)
    raises(["fer2013.csv", *fragments], load_dataset, f)
    assert load_dataset(f, skip_bad_rows=True).skipped == 1


def test_huge_pixel_value_is_out_of_range(tmp_path):
    f = fer_csv(tmp_path, lambda ls: ls.__setitem__(2, set_pixel(ls[2], 3, "99999999999999999999999")))
    raises(["line 3", "outside 0-255"], load_dataset, f)


def test_empty_split(tmp_path):
    labels, usages, imgs = small_fer2013()
    usages = [u if u != "PrivateTest" else "PublicTest" for u in usages]
    write_fer2013_csv(tmp_path / "fer2013.csv", labels, usages, imgs)
    raises(["fer2013.csv", "no PrivateTest rows"], load_dataset, tmp_path)
    save_png(tmp_path / "f" / "train" / "happy" / "a.png", random_images(1)[0])
    (tmp_path / "f" / "test" / "happy").mkdir(parents=True)
    raises(["test", "no images"], load_dataset, tmp_path / "f")


def test_unknown_class_with_explicit_classes(tmp_path):
    save_png(tmp_path / "cat" / "a.png", random_images(1)[0])
    save_png(tmp_path / "dog" / "b.png", random_images(1)[0])
    raises(["dog", "unknown class folder"], load_dataset, tmp_path, classes=["cat", "bird"])


def test_non_image_files_are_skipped_with_a_warning(tmp_path, capsys):
    write_ck48(tmp_path, {"happy": ["S010_004_00000017.png"], "sadness": ["S011_001_00000001.png"]})
    (tmp_path / "happy" / "Thumbs.db").write_bytes(b"\0")
    (tmp_path / ".DS_Store").write_bytes(b"\0")
    d = load_dataset(tmp_path)
    err = capsys.readouterr().err.strip().splitlines()
    assert d.skipped == 2 and len(d) == 2 and len(err) == 2
    assert any("Thumbs.db" in ln for ln in err) and any(".DS_Store" in ln for ln in err)


def test_image_of_another_size(tmp_path):
    write_ck48(tmp_path, {"happy": ["S010_004_00000017.png"]})
    save_png(tmp_path / "happy" / "S010_004_00000018.png", random_images(1, size=50)[0])
    raises(["S010_004_00000018.png", "50x50", "expected 48x48"], load_dataset, tmp_path)
    assert load_dataset(tmp_path, skip_bad_rows=True).skipped == 1


def test_ck48_name_that_does_not_parse(tmp_path):
    write_ck48(tmp_path, {"anger": ["subject10.png"]})
    raises(["subject10.png", "does not parse"], load_dataset, tmp_path)


def test_jaffe_unknown_expression_code(tmp_path):
    from PIL import Image
    Image.fromarray(random_images(1, size=256)[0]).save(tmp_path / "KA.XX1.39.tiff")
    raises(["KA.XX1.39.tiff", "unknown expression code 'XX'"], load_dataset, tmp_path)


def test_ferplus_row_count_and_usage_must_agree(tmp_path):
    labels, usages, imgs = small_fer2013()
    write_fer2013_csv(tmp_path / "fer2013.csv", labels, usages, imgs)
    votes = ",".join(["0", "10"] + ["0"] * 8)
    fp = tmp_path / "fer2013new.csv"
    fp.write_text(FERPLUS_HEADER + "\n" + "".join(f"{u},x.png,{votes}\n" for u in usages[:-1]))
    raises(["fer2013new.csv", "27 rows", "28"], load_dataset, tmp_path, ferplus=fp)
    swapped = list(usages)
    swapped[20], swapped[3] = "Training", "PrivateTest"
    fp.write_text(FERPLUS_HEADER + "\n" + "".join(f"{u},x.png,{votes}\n" for u in swapped))
    raises(["fer2013new.csv", "line 5", "Usage PrivateTest", "Training"], load_dataset, tmp_path, ferplus=fp)
    fp.write_text("Usage,Image name,neutral\n")
    raises(["fer2013new.csv", "wrong header"], load_dataset, tmp_path, ferplus=fp)
    raises(["needs --ferplus"], load_dataset, tmp_path, labels="ferplus_majority")


def test_ferplus_file_passed_as_data(tmp_path):
    (tmp_path / "fer2013new.csv").write_text(FERPLUS_HEADER + "\nTraining,a.png,0,10,0,0,0,0,0,0,0,0\n")
    raises(["fer2013new.csv", "--ferplus"], load_dataset, tmp_path / "fer2013new.csv")


def test_bad_clean_label_sidecar(tmp_path):
    fer_csv(tmp_path)
    (tmp_path / "clean_labels.csv").write_text("file,clean_label\n0,3\n1,9\n")
    raises(["clean_labels.csv", "line 3", "outside 0-6"], load_dataset, tmp_path)


def test_unknown_format_name(tmp_path):
    fer_csv(tmp_path)
    raises(["--format 'csv'", "unknown format"], load_dataset, tmp_path, "csv")


def test_partial_layouts_are_detected_and_named(tmp_path):
    save_png(tmp_path / "fer" / "train" / "happy" / "a.png", random_images(1)[0])
    raises(["test", "missing folder"], load_dataset, tmp_path / "fer")
    write_ck48(tmp_path / "ck", {"anger": ["S010_004_00000017.png"], "neutral": ["S010_004_00000001.png"]})
    raises(["neutral", "unknown class folder"], load_dataset, tmp_path / "ck")
