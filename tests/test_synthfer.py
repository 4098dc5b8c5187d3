"""SynthFER: determinism, class balance, FES-directed label noise, every export read
back by the real readers, the preview, and the command line."""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from nas.apps.synthfer import get_args_parser, main
from nas.runtime.cli import run
from nas.data import load_dataset
from nas.data.dataset import FER_CLASSES
from nas.data.synthfer import (CK_CLASSES, CK_COUNTS, FER_SPLIT_SIZES, FER_TRAIN_COUNTS, JAFFE_COUNTS,
                               JAFFE_SUBJECTS, ambiguity_score, class_counts, export, export_cached, fes_matrix,
                               flip_labels, render)
from nas.data.synthfer.render_v2 import REVISION
from nas.runtime.errors import FerNasError
from nas.fes import DEFAULT_FES, FERPLUS_DISAGREEMENT_DECILES


# ----------------------------------------------------------------------------- renderer
def test_render_is_deterministic_and_seed_dependent():
    a, la, ea = render(40, seed=5)
    b, lb, eb = render(40, seed=5)
    c, lc, _ = render(40, seed=6)
    assert a.dtype == np.uint8 and a.shape == (40, 48, 48)
    assert np.array_equal(a, b) and np.array_equal(la, lb) and np.array_equal(ea["au"], eb["au"])
    assert not np.array_equal(a, c)
    assert a.std() > 20  # faces, not a flat field
    # labels given: same faces for the same labels and seed
    d, ld, _ = render(40, seed=5, labels=la)
    assert np.array_equal(d, a) and np.array_equal(ld, la)


def test_class_counts_reproduce_fer2013():
    assert class_counts(28709, FER_TRAIN_COUNTS).tolist() == list(FER_TRAIN_COUNTS)
    assert class_counts(35887, FER_SPLIT_SIZES).tolist() == [28709, 3589, 3589]
    small = class_counts(1000, FER_TRAIN_COUNTS)
    assert small.sum() == 1000
    exact = 1000 * np.array(FER_TRAIN_COUNTS) / 28709
    assert np.abs(small - exact).max() < 1


def test_default_labels_follow_fer_training_balance():
    _, labels, _ = render(700, seed=1)
    assert np.bincount(labels, minlength=7).tolist() == class_counts(700, FER_TRAIN_COUNTS).tolist()
    _, labels, extra = render(98, seed=1, style="ck")
    assert extra["classes"] == list(CK_CLASSES)
    assert np.bincount(labels, minlength=7).tolist() == class_counts(98, CK_COUNTS).tolist()


@pytest.mark.parametrize("renderer", ["v1", "v2"])
def test_similar_expressions_overlap_like_fes(renderer):
    """Render the same people under the same pose and light with every expression (a
    seed fixes everything but the label) and compare: the nearest expression of sad is
    neutral, of disgust is angry, of fear is surprise (and back), of happy is neutral,
    the pairs FER+ taggers confuse (FES). Angry's nearest is disgust in v1; in v2's shaded
    faces, whose pressed lips resemble a closed mouth, and with v2's weaker default
    intensities, the resting face (neutral) lies nearest to both, as in FES's angry row; among
    the expressions angry's two nearest are sad (FES's next) and disgust, and disgust's is
    angry."""
    n = 60
    ims = np.stack([render(n, 7, labels=np.full(n, c), difficulty=1.0, renderer=renderer)[0]
                    for c in range(7)]).astype(np.float64)
    # same seed, other label: only the expression changed (identity, pose, light are paired)
    assert (ims[0] != ims[6]).any() and np.abs(ims[0] - ims[6]).mean() < 0.25 * np.abs(ims[0] - ims[0][::-1]).mean()
    dist = np.sqrt(((ims[:, None] - ims[None]) ** 2).sum((-1, -2))).mean(-1)
    np.fill_diagonal(dist, np.inf)
    nearest = {FER_CLASSES[i]: FER_CLASSES[int(dist[i].argmin())] for i in range(7)}
    assert {k: v for k, v in nearest.items() if k not in ("angry", "disgust")} == {
        "fear": "surprise", "happy": "neutral", "sad": "neutral", "surprise": "fear", "neutral": "sad"}
    if renderer == "v1":
        assert nearest["angry"] == "disgust" and nearest["disgust"] == "angry"
    else:
        assert nearest["angry"] == "neutral" and nearest["disgust"] == "neutral"
        expressive = dist.copy()
        expressive[:, FER_CLASSES.index("neutral")] = np.inf
        assert {FER_CLASSES[i] for i in np.argsort(expressive[0])[:2]} == {"sad", "disgust"}
        assert FER_CLASSES[int(expressive[1].argmin())] == "angry"
    fes = np.asarray(DEFAULT_FES)
    for a, b in (("sad", "neutral"), ("fear", "surprise"), ("happy", "neutral")):
        i, j = FER_CLASSES.index(a), FER_CLASSES.index(b)
        assert fes[i, j] == max(fes[i, k] for k in range(7) if k != i)  # FES agrees on these


def test_difficulty_zero_is_clean_and_difficulty_adds_nuisance():
    lab = np.full(64, 6)
    clean, _, _ = render(64, seed=3, labels=lab, difficulty=0.0)
    hard, _, _ = render(64, seed=3, labels=lab, difficulty=2.0)
    # neutral faces with no pose/light nuisance differ only by identity: the mean face is
    # sharper (higher pixel variance of the mean) than under pose and light jitter
    assert clean.astype(float).mean(0).std() > hard.astype(float).mean(0).std()


def test_jaffe_style_draws_the_face_inside_the_crop_box():
    im, _, _ = render(6, seed=4, style="jaffe")
    assert im.shape == (6, 256, 256)
    corner = im[:, :24, :24].astype(float)
    assert corner.std(axis=(1, 2)).max() < 6  # plain background
    box = im[:, 48:208, 48:208].astype(float)
    assert box.std(axis=(1, 2)).min() > 3 * corner.std(axis=(1, 2)).max() + 5


def test_render_rejects_bad_arguments():
    with pytest.raises(FerNasError, match="style"):
        render(4, style="photo")
    with pytest.raises(FerNasError, match="difficulty"):
        render(4, difficulty=-1)
    with pytest.raises(FerNasError, match="labels"):
        render(4, labels=[0, 1, 2, 9])


# ----------------------------------------------------------------------------- label noise
def test_flip_labels_rate_and_direction_follow_fes():
    rng = np.random.default_rng(0)
    n_per = 4000
    labels = np.repeat(np.arange(7), n_per)
    mask = np.arange(len(labels)) % 4 != 0  # a quarter of the rows must never change
    noisy = flip_labels(labels, 0.3, rng, mask=mask)
    flipped = noisy != labels
    assert flipped.sum() == round(0.3 * mask.sum())
    assert not flipped[~mask].any()
    fes = np.asarray(DEFAULT_FES, dtype=np.float64)
    for c in range(7):
        targets = noisy[flipped & (labels == c)]
        assert len(targets) > 500 and (targets != c).all()
        obs = np.bincount(targets, minlength=7)
        row = fes[c].copy()
        row[c] = 0
        expected = row / row.sum() * len(targets)
        keep = np.arange(7) != c
        assert chisquare(obs[keep], expected[keep]).pvalue > 1e-4, (c, obs, expected)
        assert obs.argmax() == row.argmax()  # e.g. sad -> neutral, fear -> surprise
    assert np.array_equal(fes_matrix(), fes)


def test_flip_labels_zero_and_bad_fraction():
    labels = np.arange(7).repeat(3)
    assert np.array_equal(flip_labels(labels, 0.0, np.random.default_rng(0)), labels)
    with pytest.raises(FerNasError, match="noise"):
        flip_labels(labels, 1.5, np.random.default_rng(0))


def _fifths(values: np.ndarray) -> np.ndarray:
    """0..4: the fifth of ``values`` each one falls in (lowest first)."""
    return np.argsort(np.argsort(values, kind="stable"), kind="stable") * 5 // len(values)


def test_flip_labels_ambiguous_mode_flips_weak_expressions_like_ferplus():
    n_per = 3000
    labels = np.repeat(np.arange(7), n_per)
    intensity = np.random.default_rng(1).uniform(0.1, 1.0, len(labels))
    au = np.zeros((len(labels), 3))  # blank resting faces: neutral's scores all tie
    amb = ambiguity_score(labels, intensity, au)
    mask = np.arange(len(labels)) % 4 != 0
    noisy = flip_labels(labels, 0.3, np.random.default_rng(5), mask=mask, mode="ambiguous", ambiguity=amb)
    again = flip_labels(labels, 0.3, np.random.default_rng(5), mask=mask, mode="ambiguous", ambiguity=amb)
    uniform = flip_labels(labels, 0.3, np.random.default_rng(5), mask=mask)
    assert np.array_equal(noisy, again) and not np.array_equal(noisy, uniform)
    flipped = noisy != labels
    assert flipped.sum() == round(0.3 * mask.sum()) and not flipped[~mask].any()
    fes = np.asarray(DEFAULT_FES, dtype=np.float64)
    # the FER+ curve in fifths, scaled to the 30 % asked for
    curve = np.asarray(FERPLUS_DISAGREEMENT_DECILES).reshape(5, 2).mean(1)
    curve = curve * 0.3 / curve.mean()
    for c in range(7):
        m = mask & (labels == c)
        assert abs(flipped[m].mean() - 0.3) < 0.03  # every class keeps its share
        rate = np.array([flipped[m][_fifths(intensity[m]) == k].mean() for k in range(5)])
        if c == 6:  # neutral: intensity draws nothing, so it does not matter
            assert rate.max() - rate.min() < 0.08, rate
        else:  # weak expressions flip most, as ambiguous FER+ images disagree most
            assert np.all(np.diff(rate) < 0) and rate[0] > 0.55 and rate[-1] < 0.03, rate
            assert np.abs(rate - curve).max() < 0.07, (rate, curve)
        targets = noisy[flipped & (labels == c)]
        assert (targets != c).all() and np.bincount(targets, minlength=7).argmax() == np.argmax(fes[c] - np.eye(7)[c])
    assert intensity[flipped].mean() < intensity[mask & ~flipped].mean() - 0.15
    # any fraction is reachable, unanimous-like faces included
    assert (flip_labels(labels, 1.0, np.random.default_rng(0), mode="ambiguous", ambiguity=amb) != labels).all()
    assert (flip_labels(labels, 0.001, np.random.default_rng(0), mode="ambiguous", ambiguity=amb) != labels).sum() == 21


def test_flip_labels_bad_mode_and_missing_ambiguity():
    labels = np.arange(7).repeat(3)
    with pytest.raises(FerNasError, match="noise_mode"):
        flip_labels(labels, 0.2, np.random.default_rng(0), mode="random")
    with pytest.raises(FerNasError, match="ambiguity"):
        flip_labels(labels, 0.2, np.random.default_rng(0), mode="ambiguous")
    with pytest.raises(FerNasError, match="ambiguity"):
        flip_labels(labels, 0.2, np.random.default_rng(0), mode="ambiguous", ambiguity=np.ones(3))


def test_ambiguous_export_same_faces_other_flips(tmp_path):
    size, noise = 600, 0.3
    uni = export_cached("fer2013", size=size, seed=2, noise=noise, cache_dir=tmp_path)
    amb = export_cached("fer2013", size=size, seed=2, noise=noise, noise_mode="ambiguous", cache_dir=tmp_path)
    # the default mode keeps the cache names exports had before modes existed; the renderer
    # is part of the name (v1's exports keep theirs)
    assert uni.name == f"fer2013-train480-pub60-priv60-seed2-noise0.3-diff1-v2{REVISION}" and "ambiguous" in amb.name
    du, da = load_dataset(uni), load_dataset(amb)
    assert torch.equal(du.images, da.images) and torch.equal(du.clean_labels, da.clean_labels)
    assert not torch.equal(du.labels, da.labels)
    train = du.split.numpy() == 0
    # Training is drawn from its own stream of the seed (substream 0)
    _, _, extra = render(int(train.sum()), 2, labels=du.clean_labels.numpy()[train], substream=0)
    inten = np.zeros(size)
    inten[train] = extra["intensity"]
    gaps = {}
    for name, d in (("uniform", du), ("ambiguous", da)):
        flipped = (d.labels != d.clean_labels).numpy()
        assert flipped.sum() == round(noise * train.sum()) and not flipped[~train].any()
        gaps[name] = inten[train & ~flipped].mean() - inten[flipped].mean()
    se = inten[train].std() * np.sqrt(1 / 144 + 1 / 336)  # 144 of 480 training rows flipped
    assert gaps["ambiguous"] > 5 * se and abs(gaps["uniform"]) < 3 * se, (gaps, se)
    # noise 0: every mode is the same export
    assert export_cached("fer2013", size=size, seed=2, noise=0.0, noise_mode="ambiguous", cache_dir=tmp_path) \
        == export_cached("fer2013", size=size, seed=2, noise=0.0, cache_dir=tmp_path)
    info = export("fer2013", tmp_path / "e", size=size, seed=2, noise=noise, noise_mode="ambiguous")
    assert info["noise_mode"] == "ambiguous" and info["flipped"] == 144
    assert info["mean_intensity_flipped"] < info["mean_intensity_kept"]
    with pytest.raises(FerNasError, match="noise_mode"):
        export_cached("fer2013", size=size, noise_mode="ambiguos", cache_dir=tmp_path)


def test_synth_noise_mode_flag_reaches_the_export(tmp_path, monkeypatch):
    import argparse

    from nas.data.source import add_data_args, open_data_from_args

    monkeypatch.setenv("FERNAS_CACHE", str(tmp_path))
    parser = argparse.ArgumentParser()
    add_data_args(parser)
    args = parser.parse_args(["--dataset", "synthfer", "--synth_size", "100", "--synth_noise", "0.3",
                              "--synth_noise_mode", "ambiguous"])
    d = open_data_from_args(args)
    assert [p.name for p in (tmp_path / "synthfer").iterdir()] == [f"fer2013-train80-pub10-priv10-seed0-noise0.3-ambiguous-diff1-v2{REVISION}"]
    assert (d.labels != d.clean_labels).sum() == 24
    assert parser.parse_args([]).synth_noise_mode == "uniform"


# ----------------------------------------------------------------------------- exports
def _split_sizes(d) -> list[int]:
    return np.bincount(d.split.numpy(), minlength=3).tolist()


def test_fer2013_export_reads_back_with_counts_noise_and_pixels(tmp_path, monkeypatch):
    size, noise = 140, 0.2
    folder = export_cached("fer2013", size=size, seed=1, noise=noise, cache_dir=tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == ["clean_labels.csv", "fer2013.csv"]
    assert folder.parent == tmp_path and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    d = load_dataset(folder)
    assert d.format == "fer2013_csv" and d.images.shape == (size, 1, 48, 48)
    sizes = class_counts(size, FER_SPLIT_SIZES).tolist()
    assert _split_sizes(d) == sizes
    clean, labels = d.clean_labels.numpy(), d.labels.numpy()
    train = d.split.numpy() == 0
    assert np.bincount(clean[train], minlength=7).tolist() == class_counts(sizes[0], FER_TRAIN_COUNTS).tolist()
    assert (labels != clean).sum() == round(noise * sizes[0])
    assert (labels == clean)[~train].all()
    # the pixels are the renderer's, row for row: each split from its own substream of the seed
    split = d.split.numpy()
    again = np.concatenate([render(int((split == k).sum()), 1, labels=clean[split == k], substream=k)[0]
                            for k in range(3)])
    assert np.array_equal(d.images[:, 0].numpy(), again)
    # every option is part of the cache key
    other = export_cached("fer2013", size=size, seed=1, noise=0.0, cache_dir=tmp_path)
    assert other != folder and (load_dataset(other).labels == d.clean_labels).all()
    # cached: a second call returns the folder without rendering
    monkeypatch.setattr("nas.data.synthfer.render", lambda *a, **k: pytest.fail("re-rendered a cached export"))
    assert export_cached("fer2013", size=size, seed=1, noise=noise, cache_dir=tmp_path) == folder


def test_cache_root_follows_fernas_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FERNAS_CACHE", str(tmp_path))
    folder = export_cached("fer2013", size=12, seed=0, noise=0.0)
    assert folder.parent == tmp_path / "synthfer"


def test_folder_export_reads_back(tmp_path):
    size = 70
    folder = export_cached("folder", size=size, seed=2, noise=0.3, cache_dir=tmp_path)
    d = load_dataset(folder)
    assert d.format == "fer2013_folders" and len(d) == size
    assert _split_sizes(d) == class_counts(size, FER_SPLIT_SIZES).tolist()
    names = d.meta["files"]
    assert all(re.fullmatch(r"(train/\w+/Training|test/\w+/(PublicTest|PrivateTest))_\d+\.png", f) for f in names)
    # label noise lands in the folder a file sits in; the sidecar keeps the truth
    clean, labels, train = d.clean_labels.numpy(), d.labels.numpy(), d.split.numpy() == 0
    assert (labels != clean).sum() == round(0.3 * train.sum())
    assert (labels == clean)[~train].all()
    for f, y in zip(names, labels.tolist()):
        assert f.split("/")[1] == FER_CLASSES[y]


def test_ck48_export_reads_back_with_ck_counts_and_subjects(tmp_path):
    folder = export_cached("ck48", seed=0, cache_dir=tmp_path)
    d = load_dataset(folder)
    assert d.format == "ck48" and d.images.shape == (981, 1, 48, 48)
    assert d.classes == list(CK_CLASSES)
    assert np.bincount(d.labels.numpy(), minlength=7).tolist() == list(CK_COUNTS)
    assert np.array_equal(d.clean_labels.numpy(), d.labels.numpy())
    assert len(set(d.subjects)) == 120
    # sequences of 3 consecutive frames; one subject shows each expression at most once
    seqs = Counter(re.match(r"\w+/(S\d+_\d+)_\d+\.png", f).group(1) for f in d.meta["files"])
    assert set(seqs.values()) == {3} and len(seqs) == 327
    seq_label = {}
    for f, y in zip(d.meta["files"], d.labels.tolist()):
        seq_label[re.match(r"\w+/(S\d+)_(\d+)_", f).groups()] = y
    per_subject = Counter((s, y) for (s, _), y in seq_label.items())
    assert max(per_subject.values()) == 1
    # a subject keeps their face: forehead/hair rows (little expression there) of two
    # sequences of one subject are far closer than those of two different subjects
    first = np.arange(0, len(d), 3)
    x = d.images[first, 0, 4:20].flatten(1).float()
    subj = np.array(d.subjects)[first]
    dist = (x[:, None] - x[None]).abs().mean(-1).numpy()
    same = subj[:, None] == subj[None]
    off = ~np.eye(len(first), dtype=bool)
    assert (same & off).sum() > 100 and dist[same & off].mean() < 0.5 * dist[~same].mean()


def test_jaffe_export_reads_back(tmp_path):
    folder = export_cached("jaffe", seed=0, cache_dir=tmp_path)
    files = sorted(p.name for p in folder.iterdir() if p.suffix == ".tiff")
    assert len(files) == 213
    assert all(re.fullmatch(r"[A-Z]{2}\.(AN|DI|FE|HA|SA|SU|NE)\d\.\d+\.tiff", f) for f in files)
    from PIL import Image

    with Image.open(folder / files[0]) as im:
        assert im.size == (256, 256) and im.mode == "L"
    d = load_dataset(folder)
    assert d.format == "jaffe" and d.images.shape == (213, 1, 48, 48)
    assert np.bincount(d.labels.numpy(), minlength=7).tolist() == list(JAFFE_COUNTS)
    assert sorted(set(d.subjects)) == sorted(JAFFE_SUBJECTS)
    assert np.array_equal(d.clean_labels.numpy(), d.labels.numpy())


def test_export_refuses_to_overwrite_and_force_replaces_an_export(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("user data")
    with pytest.raises(FerNasError, match="not empty"):
        export("fer2013", out, size=12)
    with pytest.raises(FerNasError, match="not a SynthFER export"):
        export("fer2013", out, size=12, force=True)
    assert (out / "mine.txt").read_text() == "user data"
    out2 = tmp_path / "out2"
    info = export("fer2013", out2, size=12, seed=0, noise=0.5)
    assert info["n_images"] == 12 and info["flipped"] == round(0.5 * class_counts(12, FER_SPLIT_SIZES)[0])
    export("fer2013", out2, size=20, force=True)
    assert len(load_dataset(out2)) == 20


def test_export_rejects_bad_options(tmp_path):
    for kw, msg in (({"size": 5}, "at least 10"), ({"noise": 1.5}, "noise"), ({"difficulty": -1.0}, "difficulty")):
        with pytest.raises(FerNasError, match=msg):
            export("fer2013", tmp_path / "x", **kw)
    with pytest.raises(FerNasError, match="format"):
        export_cached("png", cache_dir=tmp_path)
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------- CLI and preview
def test_cli_preview_writes_a_labelled_grid(tmp_path, capsys):
    from PIL import Image

    run(main, get_args_parser(), ["--out", str(tmp_path / "p"), "--format", "fer2013", "--preview"])
    info = json.loads(capsys.readouterr().out)
    path = Path(info["preview"])
    assert path == tmp_path / "p" / "preview.png" and sorted(p.name for p in path.parent.iterdir()) == ["preview.png"]
    with Image.open(path) as im:
        w, h = im.size
        a = np.asarray(im.convert("L"), dtype=np.float64)
    assert h >= 7 * 144 and w >= 12 * 144  # a row per class, 2 clean + 10 sampled columns of 48×3 px
    rows = [a[h - (7 - c) * 144:h - (6 - c) * 144, 200:] for c in range(7)]
    assert all(r.std() > 20 for r in rows)  # every row holds faces
    assert not np.allclose(rows[3], rows[5])


def test_cli_export_and_one_line_errors(tmp_path, capsys):
    out = tmp_path / "e"
    run(main, get_args_parser(), ["--out", str(out), "--format", "folder", "--size", "30", "--seed", "4"])
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "folder" and info["n_images"] == 30
    assert len(load_dataset(out)) == 30
    for argv, msg in ((["--out", str(out), "--format", "folder", "--size", "30"], "not empty"),
                      (["--out", str(tmp_path / "f"), "--format", "fer2013", "--noise", "2"], "noise"),
                      (["--out", str(tmp_path / "g"), "--format", "tiff"], "invalid choice"),
                      (["--out", str(tmp_path / "h"), "--format", "fer2013", "--noise_mode", "x"], "invalid choice")):
        with pytest.raises(SystemExit) as e:
            run(main, get_args_parser(), argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and msg in err



# ----------------------------------------------------------------------------- renderers
V1_REFERENCE = Path(__file__).resolve().parent / "data" / "synthfer_v1_reference.npz"


def _sample(renderer: str = "v1") -> dict[str, np.ndarray]:
    """Faces of every style at three difficulties, with their labels and parameters."""
    out = {}
    for style in ("fer", "ck", "jaffe"):
        for d in (0.0, 1.0, 1.7):
            im, lab, ex = render(1 if style == "jaffe" else 16, seed=3, difficulty=d, style=style, renderer=renderer)
            out[f"{style}_{d}_images"], out[f"{style}_{d}_labels"] = im, lab
            out.update({f"{style}_{d}_p_{k}": v for k, v in ex["params"].items()})
    return out


def _assert_matches(got: dict[str, np.ndarray], ref: np.lib.npyio.NpzFile) -> None:
    """Labels equal, parameters equal to float rounding, pixels within the CPU-kernel spread
    (see the v1 test below)."""
    assert sorted(got) == sorted(ref.files)
    for k in ref.files:
        if k.endswith("_labels"):
            assert np.array_equal(got[k], ref[k]), k
        elif "_p_" in k:
            assert np.allclose(got[k], ref[k], rtol=1e-5, atol=1e-6), k
        else:
            diff = np.abs(got[k].astype(np.int16) - ref[k].astype(np.int16))
            assert diff.max() <= 2 and (diff > 0).mean() <= 0.005, (k, int(diff.max()), float((diff > 0).mean()))


def test_v1_stays_the_same_and_its_cache_names_keep_their_version(tmp_path):
    """Earlier figures were measured on v1: its pictures must not change. The reference
    (tests/data/synthfer_v1_reference.npz, written by ``_sample`` from v1's code as it was
    before v2 existed) holds faces of every style at three difficulties, their labels and
    every parameter. Labels must be equal and parameters equal to float rounding; pixels may
    differ by one grey level on a few pixels, because torch's float kernels differ between
    CPUs (an AMD EPYC and an Intel Xeon gave different bytes; AVX-512 against the scalar
    kernels on one CPU: at most 1 level on 0.02 % of the pixels). A change to the renderer
    moves far more. On one machine the bytes repeat exactly."""
    got = _sample()
    _assert_matches(got, np.load(V1_REFERENCE))
    again = _sample()
    assert all(np.array_equal(again[k], got[k]) for k in got)
    v1 = export_cached("ck48", size=70, seed=0, cache_dir=tmp_path, renderer="v1")
    v2 = export_cached("ck48", size=70, seed=0, cache_dir=tmp_path, renderer="v2")
    assert v1.name == "ck48-n70-seed0-noise0-diff1-v1" and v2.name == f"ck48-n70-seed0-noise0-diff1-v2{REVISION}"
    assert not torch.equal(load_dataset(v1).images, load_dataset(v2).images)
    with pytest.raises(FerNasError, match="--renderer 'v9'"):
        render(4, renderer="v9")


def test_v2_pictures_match_the_reference_of_its_revision():
    """Figures in the docs were measured on v2 at its current revision: a change that is meant
    to keep v2's pictures (a speed-up, a refactor) must keep them. The reference
    (tests/data/synthfer_v2<revision>_reference.npz, written by ``_sample("v2")`` from the
    code of that revision when it was made) is checked as v1's is (r2's held under torch's
    scalar kernels against the AVX-512 ones that wrote it: at most 1 level on 0.005 % of the
    pixels). A revision that changes the pictures bumps ``REVISION`` and writes its own
    reference (the earlier ones stay in git's history)."""
    ref = Path(__file__).resolve().parent / "data" / f"synthfer_v2{REVISION}_reference.npz"
    assert ref.exists(), f"no reference for v2 revision {REVISION!r}: write {ref.name} with _sample('v2')"
    _assert_matches(_sample("v2"), np.load(ref))


def test_a_face_does_not_depend_on_the_faces_drawn_beside_it(monkeypatch):
    """Every feature's rows and columns are taken from the faces' own extents: drawn in blocks of
    any size the pictures are byte-identical (the random fields are drawn per chunk), and with
    the random texture, mottling and noise off a face drawn alone equals the same face drawn
    among 128."""
    import nas.data.synthfer.render_v1 as R1
    from nas.data.synthfer import render_v2 as R2
    rng = np.random.default_rng(7)
    p = R2.sample_params(rng, rng.integers(0, 7, 150))
    whole = R2.draw(p, seed=2)
    monkeypatch.setattr(R1, "BLOCK", 7)
    assert np.array_equal(R2.draw(p, seed=2), whole)
    for k in ("bg_tex", "mottle", "noise"):
        p[k] = np.zeros_like(p[k])
    assert np.array_equal(R2.draw(p, chunk=1), R2.draw(p, chunk=128))


def test_v2_is_deterministic_and_every_style_reads_back(tmp_path):
    a, la, ea = render(30, seed=4, renderer="v2")
    b, lb, eb = render(30, seed=4, renderer="v2")
    assert np.array_equal(a, b) and np.array_equal(la, lb) and a.std() > 20
    for fmt, n in (("fer2013", 70), ("ck48", 70), ("jaffe", 30)):
        info = export(fmt, tmp_path / fmt, size=n, seed=1, renderer="v2")
        d = load_dataset(tmp_path / fmt)
        assert len(d) == info["n_images"] and info["renderer"] == "v2" and d.clean_labels is not None


# ----------------------------------------------------------------------------- split sizes and noisy validation
def test_split_sizes_are_set_separately_and_training_faces_do_not_depend_on_them(tmp_path):
    """A bench trains on 2,400 faces and tests on 5,000 (issue 32): each split's size can be set,
    and the same seed gives the same Training faces and labels (noisy ones included) whatever the
    test splits' sizes, because each split is drawn from its own stream of the seed."""
    small = load_dataset(export_cached("fer2013", size=100, seed=4, noise=0.3, cache_dir=tmp_path))
    big = load_dataset(export_cached("fer2013", size=100, seed=4, noise=0.3, public_size=70, private_size=130,
                                     cache_dir=tmp_path))
    assert _split_sizes(small) == [80, 10, 10] and _split_sizes(big) == [80, 70, 130]
    ts, tb = small.subset("Training"), big.subset("Training")
    assert torch.equal(ts.images, tb.images) and torch.equal(ts.labels, tb.labels)
    assert torch.equal(ts.clean_labels, tb.clean_labels)
    # a larger test split extends nothing: its own people, not the small split's plus more
    assert not torch.equal(big.subset("PrivateTest").images[:10], small.subset("PrivateTest").images)
    # --train_size sets Training alone; the test splits keep their share of --size
    t = load_dataset(export_cached("fer2013", size=100, seed=4, noise=0.3, train_size=50, cache_dir=tmp_path))
    assert _split_sizes(t) == [50, 10, 10]
    # every size is part of the cache name
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [f"fer2013-train{a}-pub{b}-priv{c}-seed4-noise0.3-diff1-v2{REVISION}"
                     for a, b, c in ((50, 10, 10), (80, 10, 10), (80, 70, 130))]
    info = export("fer2013", tmp_path / "e", size=100, seed=4, noise=0.3, public_size=70, private_size=130)
    assert info["splits"] == {"Training": 80, "PublicTest": 70, "PrivateTest": 130} and info["n_images"] == 280


def test_noisy_validation_flips_public_test_as_training_and_leaves_private_test_clean(tmp_path):
    clean_val = load_dataset(export_cached("fer2013", size=400, seed=5, noise=0.3, public_size=200,
                                           cache_dir=tmp_path))
    noisy_val = load_dataset(export_cached("fer2013", size=400, seed=5, noise=0.3, public_size=200,
                                           noise_splits="train+val", noise_mode="ambiguous", cache_dir=tmp_path))
    flipped = (noisy_val.labels != noisy_val.clean_labels).numpy()
    split = noisy_val.split.numpy()
    assert flipped[split == 0].sum() == round(0.3 * 320) and flipped[split == 1].sum() == round(0.3 * 200)
    assert not flipped[split == 2].any()
    # the sidecar holds the truth of every split; the pictures are the same as with a clean PublicTest
    assert torch.equal(noisy_val.images, clean_val.images)
    assert torch.equal(noisy_val.clean_labels, clean_val.clean_labels)
    assert ((clean_val.labels != clean_val.clean_labels).numpy()[split != 0] == 0).all()
    # with nothing flipped the noise splits name the same export
    assert export_cached("fer2013", size=100, noise=0.0, noise_splits="train+val", cache_dir=tmp_path) \
        == export_cached("fer2013", size=100, noise=0.0, cache_dir=tmp_path)
    assert "-noisyval-" in export_cached("fer2013", size=100, noise=0.1, noise_splits="train+val",
                                         cache_dir=tmp_path).name


@pytest.mark.parametrize("kwargs,msg", [
    ({"fmt": "fer2013", "public_size": 0}, "--public_size 0: must be a positive"),
    ({"fmt": "fer2013", "private_size": -3}, "--private_size -3: must be a positive"),
    ({"fmt": "fer2013", "noise_splits": "val"}, "--noise_splits 'val': choose from train, train+val"),
    ({"fmt": "ck48", "private_size": 100}, "--private_size: only the FER2013-style exports"),
    ({"fmt": "jaffe", "noise_splits": "train+val"}, "--noise_splits: only the FER2013-style exports"),
    ({"fmt": "fer2013", "size": 5}, "need at least 10 rows"),
])
def test_bad_split_options_are_one_line_errors_before_anything_is_written(tmp_path, kwargs, msg):
    fmt = kwargs.pop("fmt")
    with pytest.raises(FerNasError, match=re.escape(msg)):
        export(fmt, tmp_path / "out", **kwargs)
    with pytest.raises(FerNasError, match=re.escape(msg)):
        export_cached(fmt, cache_dir=tmp_path / "cache", **kwargs)
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_stage_flags_reach_the_split_sizes_and_noise_splits(tmp_path, monkeypatch):
    import argparse

    from nas.data.source import add_data_args, open_data_from_args

    monkeypatch.setenv("FERNAS_CACHE", str(tmp_path))
    parser = argparse.ArgumentParser()
    add_data_args(parser)
    args = parser.parse_args(["--dataset", "synthfer", "--synth_size", "100", "--synth_public_size", "30",
                              "--synth_private_size", "40", "--synth_noise", "0.5", "--synth_noise_splits",
                              "train+val"])
    d = open_data_from_args(args)
    assert _split_sizes(d) == [80, 30, 40]
    flipped = (d.labels != d.clean_labels).numpy()
    assert flipped[d.split.numpy() == 1].sum() == 15 and not flipped[d.split.numpy() == 2].any()


def test_ferplus_noise_follows_the_real_transition():
    """Mode ferplus: exactly the asked share flipped; classes the real FER+ taggers disagree on
    most are flipped most, and towards the classes they name instead (fear -> surprise, sad ->
    neutral), not along FES."""
    from nas.data.ferplus import FERPLUS_TRANSITION

    labels = np.repeat(np.arange(7), 10_000)
    noisy = flip_labels(labels, 0.2, np.random.default_rng(0), mode="ferplus")
    flipped = noisy != labels
    assert flipped.sum() == round(0.2 * len(labels))
    rate = np.array([flipped[labels == c].mean() for c in range(7)])
    off = 1 - np.diag(FERPLUS_TRANSITION)
    assert np.corrcoef(rate, off)[0, 1] > 0.99  # proportional to the real off-diagonal mass
    np.testing.assert_allclose(rate, 0.2 * 7 * off / off.sum(), atol=0.02)
    moved = np.zeros((7, 7))
    np.add.at(moved, (labels[flipped], noisy[flipped]), 1)
    target = FERPLUS_TRANSITION * (1 - np.eye(7))
    np.testing.assert_allclose(moved / moved.sum(1, keepdims=True), target / target.sum(1, keepdims=True), atol=0.04)


def test_export_cli_takes_the_split_sizes_and_noise_splits(tmp_path, capsys):
    import json as _json

    from nas.apps.synthfer import get_args_parser, main

    info = main(get_args_parser().parse_args(["--out", str(tmp_path / "e"), "--format", "fer2013", "--size", "100",
                                              "--public_size", "30", "--private_size", "50", "--noise", "0.2",
                                              "--noise_splits", "train+val"]))
    assert info["splits"] == {"Training": 80, "PublicTest": 30, "PrivateTest": 50}
    assert info["flipped_by_split"] == {"Training": 16, "PublicTest": 6, "PrivateTest": 0}
    assert _json.loads(capsys.readouterr().out.strip().splitlines()[-1])["noise_splits"] == "train+val"
