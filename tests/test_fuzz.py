"""Fuzzing the readers and loaders with hypothesis.

Every input ends as valid data or the documented one-line :class:`FerNasError` (exit status 2
from a CLI), never another exception. Where a mutation's verdict is clear-cut (a pixel of 256,
a label of 7, an unknown Usage), the outcome is checked exactly against an oracle written from
the documented format: which line is named, how many rows are skipped, and that the surviving
rows hold exactly the pixels, labels and splits written.

Run ``pytest tests/test_fuzz.py --hypothesis-show-statistics`` to see how many cases ran.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import string
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from nas.runtime.cli import ArgumentParser, float_list, int_list, parse_args, str2bool
from nas.data import SPLITS, load_dataset
from nas.data.ck48 import CK48_FOLDERS
from nas.data.files import IMAGE_EXTS
from nas.data.jaffe import JAFFE_CODES
from nas.runtime.errors import FerNasError
from nas.models.genotypes import Genotype, genotype_to_dict, load_genotype
from nas.models.ops import OPS
from tests.cli_util import assert_one_line_error, run_script
from tests.fer_files import pixel_text, random_images

def fuzz(n: int) -> settings:
    """Hypothesis settings for ``n`` cases (times ``$FERNAS_FUZZ_SCALE`` for a deeper run):
    no deadline (the tests share two cores), failing cases printed as reproducible blobs."""
    return settings(max_examples=max(1, int(n * float(os.environ.get("FERNAS_FUZZ_SCALE", "1")))), deadline=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def flat(s: str) -> str:
    """``s`` as a one-line message shows it (FerNasError folds whitespace runs into one space)."""
    return " ".join(s.split())


def one_line(e: FerNasError, *fragments: str) -> None:
    msg = str(e)
    assert msg and "\n" not in msg and "\r" not in msg, repr(msg)
    for f in fragments:
        assert f in msg, (f, msg)


def check_ferdata(d, num_classes: int = 7, size: tuple[int, int] | None = (48, 48)) -> None:
    """What every reader promises about the data it returns."""
    n = len(d.labels)
    assert n > 0
    assert d.images.dtype == torch.uint8 and d.images.ndim == 4 and d.images.shape[:2] == (n, 1)
    if size is not None:
        assert tuple(d.images.shape[2:]) == size
    assert d.labels.dtype == torch.int64 and d.split.dtype == torch.int64 and len(d.split) == n
    assert int(d.labels.min()) >= 0 and int(d.labels.max()) < num_classes == len(d.classes)
    assert int(d.split.min()) >= 0 and int(d.split.max()) < len(SPLITS)


# ============================================================================== FER2013 CSV
# A six-row table with every split; each row gets one mutation whose verdict is known.
USAGES = ["Training", "Training", "Training", "PublicTest", "PublicTest", "PrivateTest"]
LABELS = [0, 3, 6, 1, 2, 5]
IMAGES = random_images(6, seed=11)

BAD_PIXELS = ["256", "999", "2556", "-1", "1.5", "abc", "0x10", "1e2", "+5", "\u0663", "\uff11", "\x00", '5"5',
              "12,", "3;4"]
LABEL_TOKENS = {"0": 0, "6": 6, " 3 ": 3, '"4"': 4, "7": None, "-1": None, "x": None, "": None, "3.0": None,
                "99999999999999999999": None, "1 2": None, "\xff": None, "nan": None}
USAGE_TOKENS = {"Training": 0, "PublicTest": 1, "PrivateTest": 2, '"PrivateTest"': 2, " Training": 0,
                "training": None, "Test": None, "": None, "Private Test": None, "PrivateTest2": None,
                "Training\x00": None}

row_mutation = st.one_of(
    st.just(("ok",)),
    st.tuples(st.just("count"), st.integers(0, 2310).filter(lambda n: n != 2304)),
    st.tuples(st.just("pixel"), st.integers(0, 2303), st.sampled_from(BAD_PIXELS)),
    st.tuples(st.just("pixel_ok"), st.integers(0, 2303), st.integers(0, 255), st.integers(0, 3)),
    st.tuples(st.just("label"), st.sampled_from(sorted(LABEL_TOKENS))),
    st.tuples(st.just("usage"), st.sampled_from(sorted(USAGE_TOKENS))),
    st.tuples(st.just("spacing"), st.sampled_from(["double", "tab", "trailing", "leading", "quoted", "crlf"])),
    st.tuples(st.just("fields"), st.sampled_from([",", ",x", ",,,"])),
    st.just(("blank",)),
)


def render_row(i: int, mut: tuple) -> tuple[str, dict | None]:
    """Row ``i`` of the table under mutation ``mut``: its text and what a correct reader
    makes of it (``None``: the row is bad)."""
    img = IMAGES[i].reshape(-1).copy()
    label, usage = str(LABELS[i]), USAGES[i]
    expect: dict | None = {"label": LABELS[i], "split": SPLITS.index(USAGES[i])}
    tokens = [str(v) for v in img]
    sep_text = None
    kind = mut[0]
    if kind == "count":
        n = mut[1]
        tokens = (tokens * 2)[:n]
        expect = None
    elif kind == "pixel":
        tokens[mut[1]] = mut[2]
        expect = None
    elif kind == "pixel_ok":
        k, v, zeros = mut[1:]
        img[k] = v
        tokens[k] = "0" * zeros + str(v)  # leading zeros ("0255") are still the same integer
    elif kind == "label":
        label = mut[1]
        y = LABEL_TOKENS[label]
        expect = None if y is None else {**expect, "label": y}
    elif kind == "usage":
        usage = mut[1]
        s = USAGE_TOKENS[usage]
        expect = None if s is None else {**expect, "split": s}
    elif kind == "blank":
        return "", None
    pixels = " ".join(tokens)
    if kind == "spacing":
        style = mut[1]
        if style == "double":
            pixels = pixels.replace(" ", "  ", 5)
        elif style == "tab":
            pixels = pixels.replace(" ", "\t", 3)
        elif style == "trailing":
            pixels += " "
        elif style == "leading":
            pixels = " " + pixels
        elif style == "quoted":
            pixels = f'"{pixels}"'
        elif style == "crlf":
            sep_text = "\r"
    line = f"{label},{pixels},{usage}" + (sep_text or "")
    if kind == "fields":
        line += mut[1]
        expect = None
    if expect is not None:
        expect["image"] = img
    return line, expect


@fuzz(200)
@given(muts=st.lists(row_mutation, min_size=6, max_size=6), skip=st.booleans())
@example(muts=[("ok",)] * 6, skip=False)
@example(muts=[("ok",)] * 5 + [("blank",)], skip=False)
@example(muts=[("pixel", 5, "256")] + [("ok",)] * 5, skip=True)
@example(muts=[("pixel_ok", 7, 255, 1)] + [("ok",)] * 5, skip=False)  # "0255": once an AssertionError
def test_fer2013_rows_exact(muts, skip):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fer2013.csv"
        rows = [render_row(i, m) for i, m in enumerate(muts)]
        while rows and rows[-1][0] == "":  # trailing blank lines are not rows
            rows.pop()
        path.write_text("emotion,pixels,Usage\n" + "\n".join(r for r, _ in rows) + "\n", encoding="utf-8")
        bad_lines = [k + 2 for k, (_, e) in enumerate(rows) if e is None]
        good = [e for _, e in rows if e is not None]
        try:
            d = load_dataset(path, skip_bad_rows=skip)
        except FerNasError as e:
            if bad_lines and not skip:
                one_line(e, str(path), f"line {bad_lines[0]}:")
            else:  # a split lost all its rows
                one_line(e, str(path), "rows")
                assert {g["split"] for g in good} != {0, 1, 2}
            return
        assert skip or not bad_lines, f"bad lines {bad_lines} were accepted"
        check_ferdata(d)
        assert d.skipped == len(bad_lines)
        assert d.labels.tolist() == [g["label"] for g in good]
        assert d.split.tolist() == [g["split"] for g in good]
        want = np.stack([g["image"] for g in good]).reshape(-1, 1, 48, 48)
        assert np.array_equal(d.images.numpy(), want)


def _valid_csv_bytes(header: str = "emotion,pixels,Usage") -> bytes:
    cols = [c.strip() for c in header.split(",")]
    lines = [header]
    for y, u, img in zip(LABELS, USAGES, IMAGES):
        vals = {"emotion": str(y), "pixels": pixel_text(img), "Usage": u}
        lines.append(",".join(vals[c] for c in cols))
    return ("\n".join(lines) + "\n").encode()


VALID_CSV = _valid_csv_bytes()
VALID_ICML = _valid_csv_bytes("emotion, Usage, pixels")

byte_edit = st.one_of(
    st.tuples(st.just("insert"), st.floats(0, 1), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("insert"), st.floats(0, 1), st.sampled_from([b",", b'"', b"\n", b"\r\n", b" ", b"\x00",
                                                                   b"\xff\xfe", b"\xef\xbb\xbf", b"-", b"9"])),
    st.tuples(st.just("delete"), st.floats(0, 1), st.integers(1, 40)),
    st.tuples(st.just("replace"), st.floats(0, 1), st.binary(min_size=1, max_size=4)),
    st.tuples(st.just("truncate"), st.floats(0, 1), st.just(b"")),
)


def apply_edits(data: bytes, edits) -> bytes:
    b = bytearray(data)
    for kind, where, arg in edits:
        pos = min(int(where * len(b)), len(b))
        if kind == "insert":
            b[pos:pos] = arg
        elif kind == "delete":
            del b[pos:pos + arg]
        elif kind == "replace":
            b[pos:pos + len(arg)] = arg
        else:
            del b[pos:]
    return bytes(b)


@fuzz(250)
@given(base=st.sampled_from(["fer2013.csv", "icml_face_data.csv"]), edits=st.lists(byte_edit, max_size=4),
       skip=st.booleans())
@example(base="fer2013.csv", edits=[("truncate", 0.0, b"")], skip=False)          # empty file
@example(base="fer2013.csv", edits=[("truncate", 0.5, b"")], skip=True)           # cut mid-row
@example(base="fer2013.csv", edits=[("insert", 0.0, b"\xef\xbb\xbf")], skip=False)  # BOM
@example(base="fer2013.csv", edits=[("replace", 0.3, b"\xff\xfe")], skip=False)   # non-UTF-8 bytes
def test_fer2013_mutated_bytes(base, edits, skip):
    """Random byte edits of a good file (both CSV variants), including empty, truncated and
    binary-junk files: valid data or one line naming the file."""
    data = apply_edits(VALID_CSV if base == "fer2013.csv" else VALID_ICML, edits)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / base
        path.write_bytes(data)
        try:
            d = load_dataset(path, skip_bad_rows=skip)
        except FerNasError as e:
            one_line(e, str(path))
            return
        check_ferdata(d)
        assert len(d) + d.skipped <= len(data.split(b"\n"))


@fuzz(40)
@given(data=st.binary(max_size=3000), name=st.sampled_from(["fer2013.csv", "train.csv", "data.csv"]))
@example(data=b"", name="fer2013.csv")
@example(data=b"emotion,pixels,Usage\n", name="fer2013.csv")
@example(data=b"\x89PNG\r\n\x1a\n\x00\x00", name="fer2013.csv")
def test_fer2013_binary_junk(data, name):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        with pytest.raises(FerNasError) as e:
            load_dataset(path)
        one_line(e.value, tmp)


# ============================================================================== JAFFE names
def _write_image(path: Path, size: int = 32, value: int = 100) -> None:
    Image.fromarray(np.full((size, size), value, dtype=np.uint8)).save(path, format="TIFF")


name_chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="/\x00")
random_name = st.text(name_chars, min_size=1, max_size=24).filter(
    lambda s: s not in (".", "..", "clean_labels.csv") and len(s.encode("utf-8", "surrogatepass")) < 200)


@st.composite
def jaffe_name(draw) -> str:
    if draw(st.integers(0, 3)) == 0:
        return draw(random_name)
    subj = draw(st.text(st.sampled_from("KAMYNAabcz1é"), min_size=1, max_size=3))
    code = draw(st.sampled_from(list(JAFFE_CODES) + ["an", "Ha", "XX", "A", "ANN", "A1"]))
    n = draw(st.sampled_from(["1", "2", "12", "", "x", "\u0663"]))
    ident = draw(st.sampled_from(["39", "0", "", "3a", "\u0661\u0662"]))
    ext = draw(st.sampled_from([".tiff", ".tif", ".TIFF", ".png", ".txt", "", ".tiff.bak"]))
    sep = draw(st.sampled_from([".", ".", ".", "_", ".."]))
    return f"{subj}{sep}{code}{n}.{ident}{ext}"


def _is_ascii_letters(s: str, n: int) -> bool:
    return len(s) == n and all(c in string.ascii_letters for c in s)


def _is_number(s: str) -> bool:
    """One or more ASCII digits (a Unicode digit such as '\u0663' is not part of the format)."""
    return bool(s) and all(c in string.digits for c in s)


def jaffe_oracle(name: str) -> tuple[str, str | None, int | None]:
    """('skip', ...) for files the reader passes over, ('bad', ...) for names that must be an
    error, ('ok', subject, label) otherwise; from the documented <subject>.<EXPR><n>.<id>.tiff."""
    p = Path(name)
    if name.startswith(".") or p.suffix.lower() not in IMAGE_EXTS:
        return "skip", None, None
    parts = p.stem.split(".")
    if len(parts) != 3:
        return "bad", None, None
    subj, expr, ident = parts
    ok = _is_ascii_letters(subj, 2) and _is_ascii_letters(expr[:2], 2) and _is_number(expr[2:]) and \
        _is_number(ident) and expr[:2].upper() in JAFFE_CODES
    return ("ok", subj.upper(), JAFFE_CODES[expr[:2].upper()]) if ok else ("bad", None, None)


@fuzz(120)
@given(names=st.lists(jaffe_name(), min_size=1, max_size=4, unique=True))
@example(names=["KA.AN1.39.tiff", "km.ha2.7.TIF"])
@example(names=["KA.AN1.39\n.tiff"])
@example(names=["KA.AN\u0663.39.tiff"])
def test_jaffe_names(names):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "jaffe"
        root.mkdir()
        for k, n in enumerate(names):
            try:
                _write_image(root / n, value=10 * k)
            except OSError:
                assume(False)  # the file system refused the name
        verdicts = {n: jaffe_oracle(n) for n in names}
        listed = sorted(p.name for p in root.iterdir())
        try:
            d = load_dataset(root, "jaffe")
        except FerNasError as e:
            msg = str(e)
            one_line(e)
            bad = [n for n in listed if verdicts[n][0] == "bad"]
            if bad:
                assert flat(bad[0]) in msg and "JAFFE" in msg, (bad, msg)
            else:
                assert all(v[0] == "skip" for v in verdicts.values()) and "no JAFFE images" in msg, msg
            return
        ok = [n for n in listed if verdicts[n][0] == "ok"]
        assert [v for v in verdicts.values() if v[0] == "bad"] == [], f"accepted bad names {names}"
        check_ferdata(d)
        assert d.meta["files"] == ok
        assert d.subjects == [verdicts[n][1] for n in ok]
        assert d.labels.tolist() == [verdicts[n][2] for n in ok]
        assert d.skipped == len(listed) - len(ok)


# ============================================================================== CK+ names
@st.composite
def ck_name(draw) -> str:
    if draw(st.integers(0, 3)) == 0:
        return draw(random_name)
    s = draw(st.sampled_from(["S010", "S5", "s010", "S", "X010", "S01a", "S\u0661"]))
    seq = draw(st.sampled_from(["004", "1", "", "a"]))
    frame = draw(st.sampled_from(["00000017", "2", "", "-1"]))
    ext = draw(st.sampled_from([".png", ".PNG", ".jpg", ".txt", ""]))
    return f"{s}_{seq}_{frame}{ext}"


def ck_oracle(name: str) -> str:
    p = Path(name)
    if name.startswith(".") or p.suffix.lower() not in IMAGE_EXTS:
        return "skip"
    parts = p.stem.split("_")
    ok = len(parts) == 3 and parts[0][:1] == "S" and _is_number(parts[0][1:]) and \
        _is_number(parts[1]) and _is_number(parts[2])
    return "ok" if ok else "bad"


@fuzz(100)
@given(layout=st.dictionaries(st.sampled_from(sorted(CK48_FOLDERS) + ["Happy", "neutral", "angry", ".hidden"]),
                              st.lists(ck_name(), min_size=0, max_size=3, unique=True), min_size=1, max_size=3))
@example(layout={"anger": ["S010_004_00000017.png"], "happy": ["S011_001_2.png"]})
@example(layout={"anger": ["S010_004_00000017\n.png"]})
def test_ck48_names(layout):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ck"
        for folder, names in layout.items():
            (root / folder).mkdir(parents=True)
            for n in names:
                try:
                    Image.fromarray(np.zeros((48, 48), np.uint8)).save(root / folder / n, format="PNG")
                except OSError:
                    assume(False)
        folders = sorted(layout)
        unknown = [f for f in folders if not f.startswith(".") and f.lower() not in CK48_FOLDERS]
        files = [(f, n) for f in folders if not f.startswith(".") for n in sorted(layout[f])]
        bad = [(f, n) for f, n in files if ck_oracle(n) == "bad"]
        ok = [(f, n) for f, n in files if ck_oracle(n) == "ok"]
        try:
            d = load_dataset(root, "ck48")
        except FerNasError as e:
            msg = str(e)
            one_line(e)
            if unknown:
                assert "unknown class folder" in msg and flat(unknown[0]) in msg, msg
            elif bad:
                assert flat(bad[0][1]) in msg and "CK+ file name" in msg, (bad, msg)
            else:
                assert not ok and "no images" in msg, msg
            return
        assert not unknown and not bad, f"accepted {unknown or bad}"
        check_ferdata(d)
        assert d.meta["files"] == [f"{f}/{n}" for f, n in ok]
        assert d.labels.tolist() == [CK48_FOLDERS[f.lower()] for f, _ in ok]
        assert d.subjects == [Path(n).stem.split("_")[0] for _, n in ok]


# ============================================================================== genotype JSON
OP_NAMES = [o for o in OPS if o != "none"]
json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 10) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)


@st.composite
def valid_genotype(draw) -> Genotype:
    """Any genotype the documented rules allow: 1-4 nodes per cell, two inputs per node from
    earlier states, a non-empty concat of distinct intermediate nodes (in any order)."""
    cells = []
    for _ in range(2):
        steps = draw(st.integers(1, 4))
        pairs = [(draw(st.sampled_from(OP_NAMES)), draw(st.integers(0, j // 2 + 1))) for j in range(2 * steps)]
        concat = draw(st.lists(st.integers(2, steps + 1), min_size=1, max_size=steps, unique=True))
        cells.append((pairs, concat))
    return Genotype(cells[0][0], cells[0][1], cells[1][0], cells[1][1])


genotype_edit = st.one_of(
    st.tuples(st.just("op"), st.sampled_from(["normal", "reduce"]), st.integers(0, 7),
              st.sampled_from(OP_NAMES + ["none", "conv_9x9", "", "SEP_CONV_3X3", "__import__"])),
    st.tuples(st.just("index"), st.sampled_from(["normal", "reduce"]), st.integers(0, 7), json_value),
    st.tuples(st.just("pair"), st.sampled_from(["normal", "reduce"]), st.integers(0, 7), json_value),
    st.tuples(st.just("concat"), st.sampled_from(["normal_concat", "reduce_concat"]), st.just(0), json_value),
    st.tuples(st.just("key"), st.sampled_from(["normal", "reduce_concat", "extra", "comment"]), st.just(0),
              json_value),
    st.tuples(st.just("drop"), st.sampled_from(["normal", "reduce", "normal_concat"]), st.integers(0, 7), st.none()),
)


def edit_genotype(d: dict, edit) -> dict:
    kind, key, j, val = edit
    d = json.loads(json.dumps(d))
    if kind in ("op", "index", "pair") and isinstance(d.get(key), list) and d[key]:
        j %= len(d[key])
        if kind != "pair" and not (isinstance(d[key][j], list) and len(d[key][j]) == 2):
            return d  # an earlier edit already broke this pair
        if kind == "op":
            d[key][j][0] = val
        elif kind == "index":
            d[key][j][1] = val
        else:
            d[key][j] = val
    elif kind in ("concat", "key"):
        d[key] = val
    elif kind == "drop":
        if isinstance(d.get(key), list) and d[key]:
            d[key].pop(j % len(d[key]))
        else:
            d.pop(key, None)
    return d


def assert_genotype_rules(g: Genotype) -> None:
    """The documented rules, checked independently of nas.models.genotypes' validator."""
    for pairs, concat in ((g.normal, g.normal_concat), (g.reduce, g.reduce_concat)):
        assert len(pairs) >= 2 and len(pairs) % 2 == 0
        steps = len(pairs) // 2
        for j, (op, idx) in enumerate(pairs):
            assert op in OPS and op != "none"
            assert type(idx) is int and 0 <= idx <= j // 2 + 1
        assert concat and len(set(concat)) == len(concat)
        assert all(type(c) is int and 2 <= c <= steps + 1 for c in concat)


@fuzz(200)
@given(g=valid_genotype(), edits=st.lists(genotype_edit, max_size=3))
def test_genotype_json_mutations(g, edits):
    d = genotype_to_dict(g)
    for e in edits:
        d = edit_genotype(d, e)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cell.json"
        path.write_text(json.dumps(d))
        try:
            got = load_genotype(str(path))
        except FerNasError as e:
            one_line(e, str(path))
            assert edits, "a valid genotype was refused"
            return
        assert_genotype_rules(got)
        if not edits:
            assert got == g


@fuzz(60)
@given(doc=json_value, raw=st.binary(max_size=60), which=st.integers(0, 2))
@example(doc=None, raw=b"", which=1)
@example(doc=None, raw=b"\xff\xfe{", which=1)
def test_genotype_json_garbage(doc, raw, which):
    """Arbitrary JSON documents, raw bytes, or a good file cut short: one line or a valid genotype."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cell.json"
        if which == 0:
            path.write_text(json.dumps(doc))
        elif which == 1:
            path.write_bytes(raw)
        else:
            good = json.dumps(genotype_to_dict(load_genotype("FER_V1"))).encode()
            path.write_bytes(good[: len(raw) % len(good)] + raw[:3])
        try:
            assert_genotype_rules(load_genotype(str(path)))
        except FerNasError as e:
            one_line(e, str(path))


@fuzz(12)
@given(g=valid_genotype())
def test_every_accepted_genotype_builds_and_runs(g):
    """Acceptance means something: each genotype the validator passes builds a network that
    runs forward and backward (tiny: 4 channels, 3 layers, 16x16 input)."""
    from nas.models import build_model

    torch.manual_seed(0)
    model = build_model(load_genotype(genotype_to_dict(g)), init_channels=4, layers=3, auxiliary=False)
    out = model.train()(torch.randn(2, 1, 16, 16))
    out = out[0] if isinstance(out, tuple) else out
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    out.sum().backward()


# ============================================================================== YAML configs
def small_parser() -> ArgumentParser:
    p = ArgumentParser(prog="fuzz")
    p.add_argument("--config", default=None)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--learning_rate", type=float, default=0.1)
    p.add_argument("--arch", default="FER_V1")
    p.add_argument("--optimizer", default="sgd", choices=("sgd", "adam"))
    p.add_argument("--cutout", action="store_true")
    p.add_argument("--fes", type=str2bool, default=True)
    p.add_argument("--snapshot_at", type=float_list, default=[85.0])
    p.add_argument("--folds", type=int_list, default=[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1])
    return p


yaml_scalar = (st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.floats() |
               st.text(string.printable, max_size=10) | st.sampled_from(["sgd", "adam", "3", "0.5", "true", "85,90"]))
yaml_value = st.recursive(yaml_scalar, lambda inner: st.lists(inner, max_size=3) |
                          st.dictionaries(st.text(max_size=4), inner, max_size=2), max_leaves=6)
yaml_key = st.sampled_from(["epochs", "learning_rate", "arch", "optimizer", "cutout", "fes", "snapshot_at", "folds",
                            "sizes", "learning-rate", "config", "help", "unknown", ""]) | st.text(max_size=6)

YAML_JUNK = [b"epochs: [1,\n", b"\tepochs: 3\n", b"- 1\n- 2\n", b"just text\n", b"epochs: 3\n  lr: 2\n",
             b"!!python/object/apply:os.system ['touch PWNED']\n",
             b"epochs: !!python/object/apply:os.getcwd []\n", b"\xff\xfe\x00e\x00p", b"", b"---\n...\n",
             b"epochs: &a 3\nfolds: *a\n", b"1: 2\n", b"? [1]\n: 2\n", b"epochs: 3\nepochs: 4\n", b"%YAML 9.9\n---\n"]


def _parse(parser: ArgumentParser, argv: list[str]) -> tuple[argparse.Namespace | None, int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            return parse_args(parser, argv), 0, err.getvalue()
        except SystemExit as e:
            return None, int(e.code or 0), err.getvalue()


def check_namespace(parser: argparse.ArgumentParser, ns: argparse.Namespace) -> None:
    """Every parsed value has the type its flag promises (as if given on the command line)."""
    for a in parser._actions:
        if a.dest in ("help", "config"):
            continue
        v = getattr(ns, a.dest)
        if isinstance(a, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            assert isinstance(v, bool), (a.dest, v)
        elif v is None or v is a.default:
            continue
        elif a.nargs in ("+", "*"):
            assert isinstance(v, list) and all(isinstance(x, a.type) for x in v), (a.dest, v)
        elif a.type in (int, float):
            assert type(v) is a.type, (a.dest, v)
        elif a.type is str2bool:
            assert isinstance(v, bool), (a.dest, v)
        elif a.type in (int_list, float_list):
            assert isinstance(v, list), (a.dest, v)
        if a.choices is not None and not isinstance(v, list):
            assert v in a.choices, (a.dest, v)


def _check_config_outcome(parser, path: Path, raw_doc) -> None:
    ns, code, err = _parse(parser, ["--config", str(path)])
    if ns is None:
        assert code == 2, (code, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"{parser.prog}: error: "), err
        assert "Traceback" not in err
        return
    check_namespace(parser, ns)
    if isinstance(raw_doc, dict) and isinstance(raw_doc.get("epochs"), int) and not isinstance(raw_doc["epochs"], bool) \
            and any(a.dest == "epochs" for a in parser._actions):
        assert ns.epochs == raw_doc["epochs"]
        ns2, code2, _ = _parse(parser, ["--config", str(path), "--epochs", "7"])  # the command line wins
        assert code2 == 0 and ns2.epochs == 7


@fuzz(150)
@given(doc=st.dictionaries(yaml_key, yaml_value, max_size=4) | yaml_value, junk=st.sampled_from([None] + YAML_JUNK))
@example(doc={"epochs": 5, "cutout": True, "folds": [1, 2], "sizes": [3, 4]}, junk=None)
def test_yaml_config_small_parser(doc, junk):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cfg.yaml"
        path.write_bytes(junk if junk is not None else yaml.safe_dump(doc, allow_unicode=True).encode())
        _check_config_outcome(small_parser(), path, doc if junk is None else None)
        assert not (Path.cwd() / "PWNED").exists() and not (Path(tmp) / "PWNED").exists()


@pytest.mark.parametrize("script", ["search.py", "train_searched.py"])
def test_yaml_config_real_parsers(script):
    """The same fuzz through the real script parsers (their own flags as keys)."""
    import importlib

    mod = importlib.import_module(Path(script).stem)
    keys = sorted(a.dest for a in mod.get_args_parser()._actions if a.dest not in ("help",))

    @fuzz(60)
    @given(doc=st.dictionaries(st.sampled_from(keys + ["nope"]), yaml_value, max_size=4),
           junk=st.sampled_from([None] * 4 + YAML_JUNK))
    def inner(doc, junk):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "cfg.yaml"
            path.write_bytes(junk if junk is not None else yaml.safe_dump(doc).encode())
            _check_config_outcome(mod.get_args_parser(), path, doc if junk is None else None)

    inner()


# ============================================================================== through real processes
@pytest.mark.slow  # hundreds of CLI cases
def test_fuzz_cases_through_the_cli(tmp_path):
    """Fuzzed faults through the command line: exit status 2, one stderr line, no traceback.
    Four in real processes (CSV junk, bad JAFFE name, YAML code tag, bad genotype file), the
    rest through the same ``nas.runtime.cli.run`` entry in this process (each process costs a torch import)."""
    from tests.cli_util import run_inprocess

    csv = tmp_path / "csv" / "fer2013.csv"
    csv.parent.mkdir()
    csv.write_bytes(apply_edits(VALID_CSV, [("replace", 0.5, b"\xff,\x00")]))
    good_csv = tmp_path / "good" / "fer2013.csv"
    good_csv.parent.mkdir()
    good_csv.write_bytes(VALID_CSV)
    jaffe = tmp_path / "jaffe"
    jaffe.mkdir()
    _write_image(jaffe / "KA.XX1.39.tiff")
    ck = tmp_path / "ck"
    (ck / "anger").mkdir(parents=True)
    Image.fromarray(np.zeros((48, 48), np.uint8)).save(ck / "anger" / "S01_a_3.png")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_bytes(b"!!python/object/apply:os.system ['touch PWNED']\n")
    bad = tmp_path / "cell.json"
    bad.write_text('{"normal": [["conv_9x9", 0]]}')

    assert_one_line_error(run_script("-m nas.data", "inspect", csv), str(csv), "line ")
    assert_one_line_error(run_script("-m nas.data", "inspect", jaffe), "KA.XX1.39.tiff", "unknown expression code")
    assert_one_line_error(run_inprocess("nas.apps.inspect", [ck]), "S01_a_3.png", "does not parse")
    assert_one_line_error(run_inprocess("nas.apps.inspect", [good_csv.parent, "--format", "jaffe"]),
                          "no JAFFE images")
    assert_one_line_error(run_script("search.py", "--config", cfg, cwd=tmp_path), str(cfg), "invalid YAML")
    assert_one_line_error(run_inprocess("train_searched.py", ["--config", cfg]), str(cfg))
    assert_one_line_error(run_script("train_searched.py", "--arch", bad, "--data", good_csv, "--device", "cpu",
                                     "--save", tmp_path / "run"), str(bad))
    assert not (tmp_path / "PWNED").exists() and not (Path.cwd() / "PWNED").exists()
