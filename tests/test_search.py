"""End-to-end search on tiny data: a valid genotype, Training split only, exports, and resume equivalence."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nas.data.dataset import FERData
from nas.runtime.errors import FerNasError, RunInterrupted
from nas.models.genotypes import load_genotype
from nas.apps.search import get_args_parser
from nas.apps.search import main as run_search
from nas.engine.session import start_session
from nas.search.searcher import BilevelSearch, Searcher, check_args

ROOT = Path(__file__).resolve().parent.parent
# A small custom space keeps the supernet cheap: these tests are bound by per-op overhead.
SPACE = "none,max_pool_3x3,skip_connect,sep_conv_3x3"
SGAS_FLAGS = ("--use_history", "--post_val")


def tiny_data(n_train=56, size=14):
    """Class-dependent blobs plus noise; 8 test images of a marker value that search must never see."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n_train) % 7
    base = torch.linspace(0, 1, size)[None, :].expand(size, size)
    imgs = 60 + 120 * base[None] * (labels[:, None, None] / 6.0) + 30 * torch.rand(n_train, size, size, generator=g)
    images = torch.cat([imgs.clamp(0, 254).to(torch.uint8), torch.full((8, size, size), 255, dtype=torch.uint8)])
    split = torch.cat([torch.zeros(n_train, dtype=torch.int64), torch.tensor([1] * 4 + [2] * 4)])
    return FERData(images=images[:, None], labels=torch.cat([labels, torch.arange(8) % 7]), split=split,
                   classes=["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"],
                   format="fer2013_csv", source="memory")


def tiny_args(save, *extra):
    return get_args_parser().parse_args(
        ["--init_channels", "4", "--layers", "3", "--search_space", SPACE, "--batch_size", "8",
         "--batch_increase", "0", "--warmup_dec_epoch", "0", "--decision_freq", "1",
         "--epochs_after_last_decision", "0", "--crop", "12", "--seed", "3", "--device", "cpu",
         "--save", str(save), "--progress", "False", "--plots", "False", *extra])


def searcher(args, data, stop=None):
    """A Searcher in the session search.py would open (flags checked first, then the resume
    rule, run folder and seed), as ``nas.apps.search.main`` does."""
    if not args.resume:
        check_args(args)
    return Searcher(start_session(args, get_args_parser(), stage="search"), data, stop=stop)


class StopAfter:
    """Requests a stop once the searcher has done ``n`` steps in all."""

    signum = 15

    def __init__(self, n):
        self.n, self.searcher = n, None

    @property
    def requested(self):
        return self.searcher is not None and self.searcher.global_step >= self.n


@pytest.fixture(scope="module")
def full_sgas(tmp_path_factory):
    """One uninterrupted tiny SGAS search (exported as TINY_1), shared by two tests."""
    base = tmp_path_factory.mktemp("sgas")
    old = os.environ.get("FERNAS_GENOTYPES")
    os.environ["FERNAS_GENOTYPES"] = str(base / "genos")
    try:
        s = searcher(tiny_args(base / "run", *SGAS_FLAGS, "--export", "TINY_1"), tiny_data(), stop=StopAfter(10**9))
        info = {"images": s.images.clone(), "w_idx": s.w_idx, "arch_idx": s.arch_idx,
                "total_epochs": s.total_epochs, "primitives": s.model.primitives}
        info["result"] = s.run()
        info["edge_state"] = {k: list(v) for k, v in s.model.edge_state.items()}
        info["genotype"] = load_genotype("TINY_1")
    finally:
        if old is None:
            os.environ.pop("FERNAS_GENOTYPES")
        else:
            os.environ["FERNAS_GENOTYPES"] = old
    return base, info


def test_search_end_to_end_training_only(full_sgas, tmp_path, monkeypatch):
    base, info = full_sgas
    monkeypatch.setenv("FERNAS_GENOTYPES", str(base / "genos"))
    assert info["images"].shape[0] == 56 and not (info["images"] == 255).all(dim=(1, 2, 3)).any()
    assert info["total_epochs"] == 8 and len(info["w_idx"]) + len(info["arch_idx"]) == 56
    assert not set(info["w_idx"].tolist()) & set(info["arch_idx"].tolist())
    result = info["result"]
    assert result["complete"] and result["epochs"] == 8
    run = base / "run"
    assert info["genotype"] == load_genotype(str(run / "genotype.json"))  # exported, usable by name
    for cell in ("normal", "reduce"):
        assert sum(x >= 0 for x in info["edge_state"][cell]) == 8  # two decided inputs per node
    for name in ("config.yaml", "log.txt", "metrics.csv", "alphas.csv", "genotype.json", "last.pt"):
        assert (run / name).is_file(), name
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == list(range(1, 9)) and rows[0]["valid_acc"] != ""
    assert [int(r["n_decided"]) for r in rows] == [2, 4, 6, 8, 10, 12, 14, 16]
    alphas = list(csv.DictReader(open(run / "alphas.csv")))
    assert len(alphas) == 8 * 28 and abs(sum(float(alphas[0][p]) for p in info["primitives"]) - 1) < 1e-4
    data = tiny_data()
    # exporting again refuses before any work
    with pytest.raises(FerNasError, match="already exists"):
        searcher(tiny_args(tmp_path / "run2", "--export", "TINY_1"), data)
    # an existing run directory is not silently reused
    with pytest.raises(FerNasError, match="already holds a run"):
        searcher(tiny_args(run), data)


def _final(run_dir):
    ck = torch.load(Path(run_dir) / "last.pt", weights_only=True)
    return ck["model"]["alphas_normal"], ck["model"]["alphas_reduce"], ck["genotype"], ck["model"]


# SGAS stopped at an epoch boundary (3 steps/epoch, decisions and history to restore), and
# second-order DARTS stopped in the middle of an epoch (momentum buffers enter the virtual step).
@pytest.mark.parametrize("stop_at,extra", [(12, SGAS_FLAGS),
                                           (4, ("--strategy", "darts", "--epochs", "3", "--unrolled"))])
@pytest.mark.slow  # interrupted and resumed searches
def test_resume_is_bitwise_equivalent(full_sgas, tmp_path, stop_at, extra):
    data = tiny_data()
    if stop_at == 12:
        full = full_sgas[0] / "run"
    else:
        full = tmp_path / "full"
        run_search(tiny_args(full, *extra), data, stop=StopAfter(10**9))
    stop = StopAfter(stop_at)
    s = searcher(tiny_args(tmp_path / "cut", *extra), data, stop=stop)
    stop.searcher = s
    assert len(s.objective.samplers(torch.Generator())[0]) == 3
    with pytest.raises(RunInterrupted, match="--resume"):
        s.run()
    ck = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert ck["global_step"] == stop_at and ck["step"] == stop_at % 3
    # resume with only --resume (flags come from the checkpoint) in a fresh Searcher
    args = get_args_parser().parse_args(["--resume", str(tmp_path / "cut"), "--progress", "False"])
    searcher(args, data, stop=StopAfter(10**9)).run()
    an, ar, g, sd = _final(full)
    bn, br, g2, sd2 = _final(tmp_path / "cut")
    assert torch.equal(an, bn) and torch.equal(ar, br) and g == g2
    for k, v in sd.items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, sd2[k]), k
    assert len(list(csv.DictReader(open(tmp_path / "cut" / "metrics.csv")))) == s.total_epochs
    cols = ("epoch", "lr", "batch_size", "train_loss", "train_acc", "arch_loss", "valid_acc", "decided", "genotype")
    rows = [[{c: r[c] for c in cols} for r in csv.DictReader(open(d / "metrics.csv"))]
            for d in (full, tmp_path / "cut")]
    assert rows[0] == rows[1]
    assert open(full / "alphas.csv").read() == open(tmp_path / "cut" / "alphas.csv").read()


def test_darts_strategy_and_partial_channels(tmp_path):
    res = run_search(tiny_args(tmp_path / "d", "--strategy", "darts", "--epochs", "2", "--partial_channels", "2",
                               "--complexity_weight", "0.1"), tiny_data(), stop=StopAfter(10**9))
    assert res["epochs"] == 2
    load_genotype(str(tmp_path / "d" / "genotype.json"))
    header = open(tmp_path / "d" / "alphas.csv").readline().strip().split(",")
    assert header[-1] == "beta"


def test_flag_errors(tmp_path):
    data = tiny_data()
    for extra, msg in [(("--epochs", "3"), "applies to --strategy darts"),
                       (("--train_portion", "1.5"), "train_portion"),
                       (("--export", "bad-name"), "A-Za-z0-9_"),
                       (("--partial_channels", "3"), "partial_channels"),
                       (("--batch_size", "80"), "exceeds")]:
        with pytest.raises(FerNasError, match=msg):
            searcher(tiny_args(tmp_path / f"e{len(msg)}", *extra), data, stop=StopAfter(10**9)).run()
    with pytest.raises(FerNasError, match="nothing to resume"):
        searcher(get_args_parser().parse_args(["--resume", str(tmp_path / "nope")]), data)


@pytest.mark.slow  # two search subprocesses
def test_cli_synthfer_export(tmp_path):
    env = dict(os.environ, FERNAS_GENOTYPES=str(tmp_path / "g"), FERNAS_CACHE=str(tmp_path / "cache"),
               MPLBACKEND="Agg", OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(ROOT / "search.py"), "--dataset", "synthfer", "--synth_size", "140",
           "--init_channels", "4", "--layers", "3", "--search_space", SPACE, "--batch_size", "16",
           "--batch_increase", "0", "--warmup_dec_epoch", "0", "--decision_freq", "1",
           "--epochs_after_last_decision", "0", "--crop", "12", "--save", str(tmp_path / "run"),
           "--export", "SYN_1"]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "epoch 8/8" in p.stdout and "search done" in p.stdout
    assert json.loads((tmp_path / "g" / "SYN_1.json").read_text())["normal_concat"] == [2, 3, 4, 5]
    # the same command again: one-line refusal, exit 2
    p = subprocess.run(cmd[:-4] + ["--save", str(tmp_path / "run2"), "--export", "SYN_1"], env=env,
                       capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "already exists" in p.stderr


def _nan_batches_at(monkeypatch, at):
    """The search step at (epoch, step) in ``at`` sees NaN images (both halves)."""
    real_step, real_batch = BilevelSearch.step, BilevelSearch._batch
    hits = []

    def step(self, epoch, step, batch, ctx):
        self._poison = (epoch, step) in at
        hits.extend([(epoch, step)] if self._poison else [])
        return real_step(self, epoch, step, batch, ctx)

    def batch(self, idx, gen):
        x, y = real_batch(self, idx, gen)
        return (x * float("nan") if getattr(self, "_poison", False) else x), y

    monkeypatch.setattr(BilevelSearch, "step", step)
    monkeypatch.setattr(BilevelSearch, "_batch", batch)
    return hits


def test_non_finite_loss_stops_without_saving_bad_state(tmp_path, monkeypatch):
    _nan_batches_at(monkeypatch, {(1, 1)})  # epoch 2, step 2
    run = tmp_path / "nan"
    s = searcher(tiny_args(run, "--strategy", "darts", "--epochs", "3"), tiny_data(), stop=StopAfter(10**9))
    with pytest.raises(FerNasError, match=r"non-finite loss at epoch 2 step 2; .*last good checkpoint is kept"):
        s.run()
    ck = torch.load(run / "last.pt", weights_only=True)
    assert ck["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in ck["model"].values() if t.is_floating_point())


def test_nan_policy_skip_batch_search_goes_on_and_ends_finite(tmp_path, monkeypatch):
    """--nan_policy skip_batch in search: the non-finite step changes neither weights nor
    architecture nor batch-norm statistics; it is counted and the search ends with a genotype."""
    hits = _nan_batches_at(monkeypatch, {(1, 1)})
    run = tmp_path / "skip"
    res = searcher(tiny_args(run, "--strategy", "darts", "--epochs", "3", "--nan_policy", "skip_batch"), tiny_data(),
                   stop=StopAfter(10**9)).run()
    assert hits == [(1, 1)] and res["epochs"] == 3
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(r["skipped_batches"]) for r in rows] == [0, 1, 0]
    assert all(float(r["train_loss"]) == float(r["train_loss"]) for r in rows)  # no NaN in the sums
    ck = torch.load(run / "last.pt", weights_only=True)
    assert all(torch.isfinite(t).all() for t in ck["model"].values() if t.is_floating_point())
    load_genotype(str(run / "genotype.json"))
    # the skipped step itself: everything the step could change is as it was
    monkeypatch.undo()
    s = searcher(tiny_args(tmp_path / "one", "--nan_policy", "skip_batch"), tiny_data(), stop=StopAfter(10**9))
    obj, loop = s.objective, s.loop
    batch = obj.epoch_batches(0, torch.Generator().manual_seed(0))[0]
    before = {k: v.clone() for k, v in obj.model.state_dict().items()}
    adam = {k: v.clone() for k, v in obj.architect.optimizer.state_dict()["state"].get(0, {}).items()
            if isinstance(v, torch.Tensor)}
    _nan_batches_at(monkeypatch, {(0, 0)})
    out = loop.run_step(0, 0, batch)
    assert float(out.bad) == 1.0 and float(loop.sums[-1]) == 1.0 and float(loop.sums[2]) == 0.0
    after = obj.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), [k for k in before if not torch.equal(before[k], after[k])]
    assert not adam or all(torch.equal(v, obj.architect.optimizer.state_dict()["state"][0][k]) for k, v in adam.items())


@pytest.mark.slow  # two searches
def test_resumed_search_given_data_again_reads_it_there(tmp_path):
    """--resume RUN --data NEW: the data moved after the interruption; the resumed search reads it
    at the new place (a flag resume may change) and ends as the uninterrupted one. Any other flag
    given with --resume is the run's, not the command line's."""
    import shutil

    from tests.test_train import write_fer_csv

    data = tiny_data()
    data.images = torch.nn.functional.interpolate(data.images.float(), size=48).to(torch.uint8)
    (tmp_path / "old").mkdir()
    old = write_fer_csv(tmp_path / "old" / "fer2013.csv", data)
    flags = ("--data", str(old), "--crop", "40")
    full = tmp_path / "full"
    run_search(tiny_args(full, *flags), stop=StopAfter(10**9))
    stop = StopAfter(5)
    s = searcher(tiny_args(tmp_path / "cut", *flags), None, stop=stop)
    stop.searcher = s
    with pytest.raises(RunInterrupted):
        s.run()
    new = tmp_path / "moved"
    shutil.move(str(old.parent), str(new))
    args = get_args_parser().parse_args(["--resume", str(tmp_path / "cut"), "--data", str(new / "fer2013.csv"),
                                         "--learning_rate", "9.0", "--progress", "False"])
    res = run_search(args, stop=StopAfter(10**9))
    assert res["complete"]
    an, ar, g, _ = _final(full)
    bn, br, g2, _ = _final(tmp_path / "cut")
    assert torch.equal(an, bn) and torch.equal(ar, br) and g == g2
    ck = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert ck["args"]["data"] == str(new / "fer2013.csv") and ck["args"]["learning_rate"] == 0.025
    # a checkpoint of another stage is refused with one line
    with pytest.raises(FerNasError, match="written by the search stage"):
        from nas.apps import train

        train.main(train.get_args_parser().parse_args(["--resume", str(tmp_path / "cut")]))
