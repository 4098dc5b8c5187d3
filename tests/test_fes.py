"""FES matrix: a hand-computed small votes file, the published FER+ file, bad files, CLI."""
import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from nas.runtime.cli import run
from nas.data.dataset import FER_CLASSES
from nas.runtime.errors import FerNasError
from nas.apps.fes import get_args_parser, main
from nas.fes import (DEFAULT_FES, FERPLUS_DISAGREEMENT_DECILES, FES_CLASSES, disagreement_from_votes, fer_votes,
                     fes_from_ferplus, fes_from_votes, format_fes, load_fes)

REAL_FERPLUS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ferplus" / "fer2013new.csv"
HEADER = "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"
ROWS = [
    # neutral happy surprise sad anger disgust fear contempt unknown NF
    "Training,fer0000000.png,4,0,0,1,3,2,0,0,0,0",
    "Training,fer0000001.png,6,0,1,1,0,0,0,0,2,0",
    "Training,,0,0,0,0,0,0,0,0,0,10",  # not a face: no votes, still counts as a row
    "PublicTest,fer0000003.png,0,5,5,0,0,0,0,0,0,0",
]
A, D, F, H, S, U, N = range(7)  # FER2013 order: angry disgust fear happy sad surprise neutral


def _hand_fes():
    """The matrix for ROWS, worked out by hand. Per row, pairs with votes on both sides:
    row 0 (angry 3, disgust 2, sad 1, neutral 4): A-D 2/3, A-S 1/3, A-N 3/4, D-S 1/2, D-N 2/4, S-N 1/4;
    row 1 (surprise 1, sad 1, neutral 6): U-S 1, U-N 1/6, S-N 1/6; row 2: nothing;
    row 3 (happy 5, surprise 5): H-U 1. Each sum is divided by the 4 rows."""
    m = [[Fraction(0)] * 7 for _ in range(7)]
    pairs = {(A, D): Fraction(2, 3), (A, S): Fraction(1, 3), (A, N): Fraction(3, 4), (D, S): Fraction(1, 2),
             (D, N): Fraction(1, 2), (S, N): Fraction(1, 4) + Fraction(1, 6), (U, S): Fraction(1),
             (U, N): Fraction(1, 6), (H, U): Fraction(1)}
    for (i, j), v in pairs.items():
        m[i][j] = m[j][i] = v / 4
    for i in range(7):
        m[i][i] = Fraction(1)
    return np.array([[float(x) for x in r] for r in m])


def _write(tmp_path, lines, name="votes.csv"):
    p = tmp_path / name
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


def test_hand_computed_small_file(tmp_path):
    fes = fes_from_ferplus(_write(tmp_path, [HEADER] + ROWS))
    expected = _hand_fes()
    assert fes.shape == (7, 7) and fes.dtype == np.float64
    np.testing.assert_allclose(fes, expected, rtol=0, atol=1e-15)
    assert fes[S, N] == pytest.approx(5 / 48)  # (1/4 + 1/6) / 4


def test_column_order_follows_the_header(tmp_path):
    cols = HEADER.split(",")
    perm = [0, 1, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2]  # vote columns reversed
    lines = [",".join(cols[k] for k in perm)] + [",".join(r.split(",")[k] for k in perm) for r in ROWS]
    np.testing.assert_allclose(fes_from_ferplus(_write(tmp_path, lines)), _hand_fes(), rtol=0, atol=1e-15)


def test_vectorised_matches_a_row_loop():
    rng = np.random.default_rng(0)
    votes = rng.integers(0, 4, size=(200, 7)) * (rng.random((200, 7)) < 0.5)
    ref = np.eye(7)
    for i in range(7):
        for j in range(7):
            if i != j:
                ref[i, j] = sum(min(r[i], r[j]) / max(r[i], r[j]) for r in votes if r[i] > 0 and r[j] > 0) / len(votes)
    np.testing.assert_allclose(fes_from_votes(votes), ref, rtol=1e-12, atol=1e-15)


def test_classes_are_fer2013_order():
    assert list(FES_CLASSES) == list(FER_CLASSES)


@pytest.mark.skipif(not REAL_FERPLUS.is_file(), reason=f"published FER+ file not present at {REAL_FERPLUS}")
def test_published_ferplus_file():
    fes = fes_from_ferplus(REAL_FERPLUS)
    np.testing.assert_allclose(fes, DEFAULT_FES, rtol=0, atol=1e-11)
    np.testing.assert_allclose(fes[0], [1, 0.0272, 0.0219, 0.0200, 0.0488, 0.0322, 0.0584], atol=5e-5)
    off = fes - np.eye(7)
    assert np.unravel_index(off.argmax(), off.shape) in ((S, N), (N, S))
    assert fes[S, N] == pytest.approx(0.1384, abs=5e-5)


def test_default_fes_properties():
    assert DEFAULT_FES.shape == (7, 7)
    np.testing.assert_array_equal(DEFAULT_FES, DEFAULT_FES.T)
    np.testing.assert_array_equal(np.diag(DEFAULT_FES), np.ones(7))
    assert not DEFAULT_FES.flags.writeable


@pytest.mark.parametrize("lines, match", [
    ([], "empty file"),
    ([HEADER], "no data rows"),
    (["emotion,pixels,Usage", "0,1 2 3,Training"], "line 1: not a FER\\+ votes header, missing column"),
    ([HEADER, ROWS[0], "Training,x.png,1,2,3"], "line 3: expected 12 fields, found 5"),
    ([HEADER, ROWS[0], ROWS[1], "Training,x.png,1,0,0,0,two,0,0,0,0,0"], "line 4: column 'anger': 'two' is not"),
    ([HEADER, "Training,x.png,1,0,0,0,-1,0,0,0,0,0"], "line 2: column 'anger': '-1' is not"),
    ([HEADER, "Training,x.png,1,0,0,0,1.5,0,0,0,0,0"], "line 2: column 'anger'"),
    ([HEADER, "Training,x.png,1,0,0,0,1,0,0,0,0,"], "line 2: column 'NF': '' is not"),
])
def test_bad_files_one_line_naming_file_and_line(tmp_path, lines, match):
    p = _write(tmp_path, lines) if lines else tmp_path / "votes.csv"
    if not lines:
        p.write_bytes(b"")
    with pytest.raises(FerNasError, match=match) as err:
        fes_from_ferplus(p)
    assert str(p) in str(err.value) and "\n" not in str(err.value)


def test_missing_and_binary_files(tmp_path):
    with pytest.raises(FerNasError, match="not found"):
        fes_from_ferplus(tmp_path / "nope.csv")
    p = tmp_path / "bin.csv"
    p.write_bytes(b"\xff\xfe\x00\x81" * 10)
    with pytest.raises(FerNasError, match="not a text CSV"):
        fes_from_ferplus(p)


def test_cli_prints_and_writes_json(tmp_path, capsys):
    votes = _write(tmp_path, [HEADER] + ROWS)
    out = tmp_path / "fes.json"
    fes = main(get_args_parser().parse_args(["--ferplus", str(votes), "--out", str(out)]))
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].split() == list(FES_CLASSES)
    assert printed.splitlines()[5].split()[0] == "sad" and "0.1042" in printed  # 5/48
    data = json.loads(out.read_text())
    assert data["classes"] == list(FES_CLASSES)
    np.testing.assert_array_equal(np.array(data["matrix"]), fes)  # JSON floats round-trip exactly
    np.testing.assert_array_equal(load_fes(out), fes)
    np.testing.assert_array_equal(load_fes(votes), fes)


def test_cli_bad_file_exits_2(tmp_path, capsys):
    bad = _write(tmp_path, [HEADER, "Training,x.png,1,0,0,0,oops,0,0,0,0,0"])
    with pytest.raises(SystemExit) as e:
        run(main, get_args_parser(), ["--ferplus", str(bad)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "line 2" in err and str(bad) in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("content, match", [
    ("{", "not valid JSON"),
    ('{"matrix": [[1, 2], [3, 4]]}', "must be 7x7"),
    ('{"classes": ["a"], "matrix": []}', "not in FER2013 order"),
    ('[[1, 0, 0, 0, 0, 0, "x"]]', "7x7 list of numbers|must be 7x7"),
    (json.dumps([[-1.0] * 7] * 7), "non-negative"),
])
def test_load_fes_rejects_bad_matrices(tmp_path, content, match):
    p = tmp_path / "m.json"
    p.write_text(content)
    with pytest.raises(FerNasError, match=match):
        load_fes(p)


def test_load_fes_bare_list(tmp_path):
    p = tmp_path / "m.json"
    p.write_text(json.dumps(DEFAULT_FES.tolist()))
    np.testing.assert_array_equal(load_fes(p), DEFAULT_FES)


def test_format_fes_has_class_names():
    text = format_fes(DEFAULT_FES, 3)
    assert [line.split()[0] for line in text.splitlines()[1:]] == list(FES_CLASSES)
    assert "0.138" in text


# ----------------------------------------------------------------------------- single-tagger disagreement
def test_disagreement_hand_computed(tmp_path):
    """ROWS' seven-class votes: row 0 max 4 of 10 (share 0.4), row 1 6 of 8 (0.75), row 2 no
    FER-class vote (dropped), row 3 5 of 10 (0.5); contempt/unknown/NF never count."""
    d = disagreement_from_votes(fer_votes(_write(tmp_path, [HEADER] + ROWS)), bins=3)
    assert d["images"] == 3
    assert d["mean_share"] == pytest.approx((0.4 + 0.75 + 0.5) / 3)
    assert d["disagreement"] == pytest.approx(1 - (0.4 + 0.75 + 0.5) / 3)
    assert [b["disagreement"] for b in d["bins"]] == pytest.approx([0.6, 0.5, 0.25])
    assert [b["n"] for b in d["bins"]] == [1, 1, 1]
    two = disagreement_from_votes(fer_votes(_write(tmp_path, [HEADER] + ROWS)), bins=2)
    assert [b["n"] for b in two["bins"]] == [2, 1]
    assert two["bins"][0]["mean_share"] == pytest.approx(0.45)
    with pytest.raises(ValueError):
        disagreement_from_votes(np.ones((2, 7)), bins=3)


def test_disagreement_cli(tmp_path, capsys):
    votes = _write(tmp_path, [HEADER] + ROWS)
    out = tmp_path / "d.json"
    d = main(get_args_parser().parse_args(["--ferplus", str(votes), "--disagreement", "--bins", "3",
                                           "--out", str(out)]))
    printed = capsys.readouterr().out
    assert "45.0 %" in printed and "60.0 %" in printed and "25.0 %" in printed
    assert json.loads(out.read_text())["bins"] == d["bins"]
    with pytest.raises(SystemExit) as e:
        run(main, get_args_parser(), ["--ferplus", str(votes), "--disagreement", "--bins", "0"])
    assert e.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.skipif(not REAL_FERPLUS.is_file(), reason=f"published FER+ file not present at {REAL_FERPLUS}")
def test_disagreement_on_the_published_file():
    votes = fer_votes(REAL_FERPLUS)
    deciles = disagreement_from_votes(votes, bins=10)
    np.testing.assert_allclose([b["disagreement"] for b in deciles["bins"]], FERPLUS_DISAGREEMENT_DECILES,
                               rtol=0, atol=1e-11)
    q = [b["disagreement"] for b in disagreement_from_votes(votes, bins=5)["bins"]]
    assert all(a > b for a, b in zip(q, q[1:-1]))  # falls with ambiguity; the last fifth is unanimous
    assert q[-1] == 0.0 and 0.15 < deciles["disagreement"] < 0.3


def test_transition_hand_computed():
    """Two images with an anger majority (votes 6 anger + 2 disgust + 2 neutral; 8 anger + 2
    fear), one happy (10 happy): the angry row is the mean vote distribution (0.7, 0.1, 0.1, 0,
    0, 0, 0.1); the happy row is one-hot."""
    import torch

    from nas.data.ferplus import transition_from_votes

    # FER+ column order: neutral, happiness, surprise, sadness, anger, disgust, fear, contempt, unknown, NF
    votes = torch.tensor([[2, 0, 0, 0, 6, 2, 0, 0, 0, 0], [0, 0, 0, 0, 8, 0, 2, 0, 0, 0],
                          [0, 10, 0, 0, 0, 0, 0, 0, 0, 0]])
    matrix, counts = transition_from_votes(votes)
    np.testing.assert_allclose(matrix[0], [0.7, 0.1, 0.1, 0, 0, 0, 0.1])
    np.testing.assert_allclose(matrix[3], [0, 0, 0, 1, 0, 0, 0])
    assert counts.tolist() == [2, 0, 0, 1, 0, 0, 0] and not matrix[1].any()


@pytest.mark.skipif(not REAL_FERPLUS.is_file(), reason=f"published FER+ file not present at {REAL_FERPLUS}")
def test_transition_on_the_published_file():
    from nas.data.ferplus import FERPLUS_MAJORITY_COUNTS, FERPLUS_TRANSITION, read_ferplus, transition_from_votes

    matrix, counts = transition_from_votes(read_ferplus(REAL_FERPLUS)[1])
    np.testing.assert_allclose(matrix, FERPLUS_TRANSITION, atol=1e-11)
    assert tuple(counts.tolist()) == FERPLUS_MAJORITY_COUNTS
    # the real single-tagger disagreement, weighted by the classes' counts: 17.7 %
    rate = 1 - (np.diag(matrix) * counts).sum() / counts.sum()
    assert rate == pytest.approx(0.17696, abs=1e-4)
