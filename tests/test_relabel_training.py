"""relabel_training.py and nas.relabel.stage: the hook's semantics (warm-up, batch vs
persistent labels, statistics against hand counts), the FES gate flag, the drop-path
continuation, transitions CSV against metrics.csv, exact resume, DDP with two gloo
ranks, bad input, and a SynthFER run with 30 % label noise in which relabelling
restores more labels than it harms."""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from nas.runtime.checkpoint import read_csv_rows, safe_load
from nas.runtime.cli import parse_args
from nas.data.dataset import FER_CLASSES
from nas.runtime.errors import FerNasError, RunInterrupted
from nas.relabel.stage import TRANSITIONS_CSV, Relabeller, drop_path_schedule, resolve_fes
from tests.ddp_util import spawn_ranks

ROOT = Path(__file__).resolve().parents[1]


from nas.apps import relabel as CLI  # noqa: E402 - what relabel_training.py runs


def cli_args(*argv: str):
    return parse_args(CLI.get_args_parser(), [str(a) for a in argv])


def run_cli(*argv: str) -> dict:
    return CLI.main(cli_args(*argv))


# ----------------------------------------------------------------------------- hook, by hand
def logits_for(pred: list[int], p_pred: float, label: list[int], p_label: float, k: int = 7) -> torch.Tensor:
    """Logits whose softmax puts ``p_pred`` on ``pred`` and ``p_label`` on ``label``
    (the rest spread evenly)."""
    rows = []
    for a, b in zip(pred, label):
        p = torch.full((k,), (1.0 - p_pred - (p_label if a != b else 0.0)) / (k - 1 - (a != b)), dtype=torch.float64)
        p[a] = p_pred
        if a != b:
            p[b] = p_label
        rows.append(p.log())
    return torch.stack(rows).float()


def test_hook_warmup_batch_and_persistent_and_statistics():
    labels = torch.tensor([0, 1, 2, 3, 4, 6, 6, 5])       # given (noisy) labels; 7 is a test sample
    clean = torch.tensor([0, 1, 6, 3, 4, 4, 6, 5])        # samples 2 and 5 are noisy
    train = torch.arange(7)
    idx = torch.tensor([0, 2, 5, 6])
    # the model: sample 0 -> angry (agrees), 2 -> neutral (restores), 5 -> sad (restores), 6 -> sad (harms)
    logits = logits_for([0, 6, 4, 4], 0.45, [0, 2, 6, 6], 0.35)
    for mode in ("batch", "persistent"):
        h = Relabeller(labels, train, threshold=0.2, mode=mode, warmup=1, clean_labels=clean, classes=FER_CLASSES)
        # epoch 0: warm-up, the given labels come back untouched
        assert h(0, 0, idx, logits, labels[idx]).tolist() == [0, 2, 6, 6]
        row, trans = h.end_epoch(0)
        assert row["relabel_changed"] == 0 and row["relabel_precision"] == ""
        assert row["relabel_recall"] == 0.0 and row["relabel_label_noise"] == pytest.approx(100 * 2 / 7)
        # epoch 1: margin 0.10 < 0.2 -> three changes
        assert h(1, 0, idx, logits, labels[idx]).tolist() == [0, 6, 4, 4]
        row, trans = h.end_epoch(1)
        assert row["relabel_changed"] == 3 and row["relabel_restored"] == 2 and row["relabel_harmed"] == 1
        assert row["relabel_wrong_to_wrong"] == 0
        assert row["relabel_precision"] == pytest.approx(100 * 2 / 3)
        assert row["relabel_recall"] == pytest.approx(100.0)           # both noisy labels trained as clean
        assert row["relabel_harm"] == pytest.approx(100 * 1 / 5)       # one of five clean labels trained wrong
        assert row["relabel_label_noise"] == pytest.approx(100 * 1 / 7)
        assert int(trans.sum()) == 3 and trans[2, 6] == 1 and trans[6, 4] == 2
        # epoch 2: a model that now agrees with everything (margin 0 for the given label)
        agree = logits_for([0, 2, 6, 6], 0.9, [0, 2, 6, 6], 0.9)
        given = h(2, 0, idx, agree, labels[idx])
        row, _ = h.end_epoch(2)
        if mode == "batch":  # every epoch starts from the dataset's labels again
            assert given.tolist() == [0, 2, 6, 6] and row["relabel_recall"] == 0.0
        else:  # the changed labels were kept, and are what the loss gets
            assert given.tolist() == [0, 6, 4, 4] and row["relabel_recall"] == pytest.approx(100.0)
            assert row["relabel_harm"] == pytest.approx(20.0)
        assert row["relabel_changed"] == 0


def test_hook_threshold_zero_never_changes_and_soft_targets_pass_through():
    labels = torch.tensor([0, 1, 2, 3])
    h = Relabeller(labels, torch.arange(4), threshold=0.0, warmup=0, classes=FER_CLASSES)
    logits = logits_for([1, 2, 3, 0], 0.5, [0, 1, 2, 3], 0.45)
    assert h(3, 0, torch.arange(4), logits, labels).tolist() == [0, 1, 2, 3]
    soft = torch.full((4, 7), 1 / 7)
    assert h(3, 0, torch.arange(4), logits, soft) is soft


def test_fes_flag_is_a_real_boolean_and_gates(tmp_path):
    assert cli_args("--checkpoint", "x.pt").fes is True
    assert cli_args("--checkpoint", "x.pt", "--fes", "False").fes is False   # the reference's type=bool made this True
    assert cli_args("--checkpoint", "x.pt", "--fes", "True").fes is True
    blocking = tmp_path / "zero.json"
    blocking.write_text(json.dumps([[1.0 if i == j else 0.0 for j in range(7)] for i in range(7)]))
    on = resolve_fes(cli_args("--checkpoint", "x.pt", "--fes_matrix", blocking), FER_CLASSES)
    off = resolve_fes(cli_args("--checkpoint", "x.pt", "--fes", "False", "--fes_matrix", blocking), FER_CLASSES)
    assert on is not None and off is None
    from nas.fes import DEFAULT_FES

    assert np.array_equal(resolve_fes(cli_args("--checkpoint", "x.pt"), FER_CLASSES), DEFAULT_FES)
    labels = torch.tensor([6, 4, 2])
    logits = logits_for([4, 6, 5], 0.45, [6, 4, 2], 0.35)
    changed = {}
    for name, fes in (("on", on), ("off", off), ("default", DEFAULT_FES)):
        h = Relabeller(labels, torch.arange(3), threshold=0.2, fes=fes, warmup=0, classes=FER_CLASSES)
        changed[name] = h(0, 0, torch.arange(3), logits, labels).tolist()
    assert changed["on"] == [6, 4, 2]          # the all-blocking matrix stops every change
    assert changed["off"] == [4, 6, 5]         # no gate
    assert changed["default"] == [4, 6, 5]     # sad-neutral 0.138 and fear-surprise 0.046 pass 0.03


def test_bad_fes_matrix_and_flags_are_one_line_errors(tmp_path, capsys):
    from nas.runtime.cli import run

    bad = tmp_path / "bad.json"
    bad.write_text("[[1, 2], [3, 4]]")
    with pytest.raises(FerNasError, match=r"bad.json: FES matrix must be 7x7"):
        resolve_fes(cli_args("--checkpoint", "x.pt", "--fes_matrix", bad), FER_CLASSES)
    with pytest.raises(FerNasError, match="FER2013 class order"):
        resolve_fes(cli_args("--checkpoint", "x.pt"), ["a", "b"])
    cases = [
        (["--no_relabel"], "--checkpoint PATH is required"),
        (["--checkpoint", "x.pt", "--labels", "ferplus_soft", "--ferplus", "v.csv"], "ferplus_soft"),
        (["--checkpoint", tmp_path / "missing.pt"], "missing.pt: checkpoint not found"),
    ]
    for argv, needle in cases:
        with pytest.raises(SystemExit) as e:
            run(CLI.main, CLI.get_args_parser(), [str(a) for a in argv])
        err = capsys.readouterr().err
        assert e.value.code == 2 and needle in err and err.count("\n") == 1, err
    with pytest.raises(SystemExit) as e:
        cli_args("--checkpoint", "x.pt", "--relabel_mode", "forever")
    assert e.value.code == 2


def test_drop_path_schedule_continues():
    assert drop_path_schedule({"epoch": 150, "drop_path": {"prob": 0.2, "total": 600}}, 100) == (0.2, 150.0, 600.0)
    # past the original end the ramp is stretched so the probability never exceeds prob
    assert drop_path_schedule({"epoch": 8, "drop_path": {"prob": 0.3, "total": 10}}, 5) == (0.3, 8.0, 13.0)


# ----------------------------------------------------------------------------- runs on toy data
def toy_dataset(folder: Path, noise_every: int = 4) -> Path:
    """fer2013.csv of learnable toy faces with every ``noise_every``-th training label
    moved to the next class, and the clean-label sidecar (as SynthFER writes it)."""
    from tests.test_train import make_data, write_fer_csv

    data = make_data(96, 32, 32)
    clean = data.labels.clone()
    noisy = torch.zeros(len(clean), dtype=torch.bool)
    noisy[:96:noise_every] = True
    data.labels = torch.where(noisy, (clean + 1) % 7, clean)
    folder.mkdir(parents=True, exist_ok=True)
    write_fer_csv(folder / "fer2013.csv", data)
    (folder / "clean_labels.csv").write_text("file,clean_label\n" + "".join(f"{i},{int(c)}\n" for i, c in enumerate(clean)))
    return folder / "fer2013.csv"


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """(data path, checkpoint of a cnn_shallow trained 2 epochs of a 4-epoch schedule)."""
    from nas.runtime.checkpoint import RunDir
    from nas.data import load_dataset
    from nas.models import build_model
    from nas.engine.trainer import TrainConfig, Trainer
    from nas.runtime.seeds import seed_everything

    root = tmp_path_factory.mktemp("relabel_toy")
    csv = toy_dataset(root / "data")
    data = load_dataset(csv)
    assert data.clean_labels is not None and int((data.labels != data.clean_labels).sum()) == 24
    cfg = TrainConfig(epochs=4, batch_size=16, progress=False, snapshot_at=[], log_interval=100, learning_rate=0.05)
    seed_everything(0)
    tr = Trainer(build_model("cnn_shallow"), data, cfg, RunDir(root / "base", quiet=True), args={"arch": "cnn_shallow"})
    for _ in range(2):  # stop half way, as a snapshot would
        tr.loop._train_epoch(tr.epoch)
        tr.loop._end_epoch(tr.epoch)
    return csv, root / "base" / "last.pt"


def _flags(toy, out: Path, *extra: str) -> list[str]:
    csv, ckpt = toy
    return ["--checkpoint", ckpt, "--data", csv, "--save", out, "--epochs", "3", "--batch_size", "16",
            "--progress", "False", "--log_interval", "100", "--learning_rate", "0.01", "--plots", "False", *extra]


def _relabel_cols(rows):
    return [{k: v for k, v in r.items() if k.startswith("relabel_") or k in ("epoch", "drop_path_prob", "train_loss",
                                                                             "val_acc", "test_acc")} for r in rows]


def test_run_writes_metrics_transitions_and_continues_drop_path(toy, tmp_path):
    out = tmp_path / "run"
    res = run_cli(*_flags(toy, out, "--relabel_threshold", "1.0", "--fes", "False", "--plots", "True"))
    rows = read_csv_rows(out / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert int(rows[0]["relabel_changed"]) == 0                     # epoch 0 trains on the given labels
    assert sum(int(r["relabel_changed"]) for r in rows[1:]) > 0
    for r in rows:
        c = int(r["relabel_changed"])
        assert c == int(r["relabel_restored"]) + int(r["relabel_harmed"]) + int(r["relabel_wrong_to_wrong"])
        if c:
            assert float(r["relabel_precision"]) == pytest.approx(100 * int(r["relabel_restored"]) / c, rel=1e-5)
    trans = read_csv_rows(out / TRANSITIONS_CSV)
    assert list(trans[0]) == ["epoch", "from", "to", "count"]
    for r in rows:
        assert sum(int(t["count"]) for t in trans if t["epoch"] == r["epoch"]) == int(r["relabel_changed"])
    assert all(t["from"] != t["to"] and t["from"] in FER_CLASSES and int(t["count"]) > 0 for t in trans)
    # drop-path: the checkpoint stopped at epoch 2 of 4; 3 more epochs stretch the ramp to 5
    ckpt = safe_load(toy[1])
    assert ckpt["epoch"] == 2 and ckpt["drop_path"]["total"] == 4
    assert [float(r["drop_path_prob"]) for r in rows] == pytest.approx([0.2 * 2 / 5, 0.2 * 3 / 5, 0.2 * 4 / 5])
    assert res["relabel"]["changed"] == sum(int(r["relabel_changed"]) for r in rows)
    saved = json.loads((out / "results.json").read_text())
    assert saved["relabel"]["restored"] == res["relabel"]["restored"] and saved["arch"] == "cnn_shallow"
    assert saved["test_acc"] == float(rows[saved["selected_epoch"] - 1]["test_acc"])   # PrivateTest at the selected epoch
    for name in ("config.yaml", "log.txt", "last.pt", "best.pt", "relabel.png"):
        assert (out / name).exists(), name
    # the model came from the checkpoint: same architecture, no --arch/--layers flags
    last = safe_load(out / "last.pt")
    assert last["model_spec"] == ckpt["model_spec"] and last["callbacks"]["relabel"]["mode"] == "batch"
    # the control run: same flags, no relabelling
    ctrl = tmp_path / "ctrl"
    run_cli(*_flags(toy, ctrl, "--relabel_threshold", "1.0", "--fes", "False", "--no_relabel"))
    crow = read_csv_rows(ctrl / "metrics.csv")
    assert all(int(r["relabel_changed"]) == 0 for r in crow) and not (ctrl / TRANSITIONS_CSV).exists()
    assert crow[0]["train_loss"] == rows[0]["train_loss"]   # same seed: identical until relabelling starts


def test_blocking_fes_matrix_stops_every_change_only_when_fes_is_true(toy, tmp_path):
    blocking = tmp_path / "zero.json"
    blocking.write_text(json.dumps({"classes": list(FER_CLASSES),
                                    "matrix": [[1.0 if i == j else 0.0 for j in range(7)] for i in range(7)]}))
    gated, open_ = tmp_path / "gated", tmp_path / "open"
    common = ("--relabel_threshold", "1.0", "--fes_matrix", blocking, "--epochs", "2")
    run_cli(*_flags(toy, gated, *common, "--fes", "True"))
    run_cli(*_flags(toy, open_, *common, "--fes", "False"))
    assert [int(r["relabel_changed"]) for r in read_csv_rows(gated / "metrics.csv")] == [0, 0]
    assert int(read_csv_rows(open_ / "metrics.csv")[1]["relabel_changed"]) > 0


def _interrupting_call(at):
    """Relabeller.__call__ that raises SIGINT after one (epoch, step): the run saves
    last.pt mid-epoch and raises RunInterrupted, as with Ctrl-C."""
    orig = Relabeller.__call__

    def call(hook, epoch, step, idx, logits, targets):
        out = orig(hook, epoch, step, idx, logits, targets)
        if (epoch, step) == at:
            signal.raise_signal(signal.SIGINT)
        return out

    return call


def test_persistent_resume_mid_epoch_is_exact(toy, tmp_path, monkeypatch):
    flags = ("--relabel_threshold", "1.0", "--fes", "False", "--relabel_mode", "persistent")
    full, cut = tmp_path / "full", tmp_path / "cut"
    run_cli(*_flags(toy, full, *flags))
    monkeypatch.setattr(Relabeller, "__call__", _interrupting_call((1, 3)))
    with pytest.raises(RunInterrupted):
        run_cli(*_flags(toy, cut, *flags))
    monkeypatch.undo()
    mid = safe_load(cut / "last.pt")
    assert mid["epoch"] == 1 and mid["step"] == 4 and mid["callbacks"]["relabel"]["mode"] == "persistent"
    # during the interrupted epoch some labels already moved (kept in the checkpoint)
    assert not torch.equal(mid["callbacks"]["relabel"]["now"], mid["callbacks"]["relabel"]["base"])
    run_cli("--resume", cut, "--progress", "False")
    a, b = safe_load(full / "last.pt"), safe_load(cut / "last.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert torch.equal(a["callbacks"]["relabel"]["base"], b["callbacks"]["relabel"]["base"])
    assert _relabel_cols(read_csv_rows(full / "metrics.csv")) == _relabel_cols(read_csv_rows(cut / "metrics.csv"))
    assert read_csv_rows(full / TRANSITIONS_CSV) == read_csv_rows(cut / TRANSITIONS_CSV)
    # persistent labels: the checkpointed tensor differs from the data's labels where changes were kept
    changed = int((a["callbacks"]["relabel"]["base"] != a["callbacks"]["relabel"]["original"]).sum())
    assert changed > 0


# ----------------------------------------------------------------------------- DDP
def _ddp_worker(rank: int, world: int, port: int, flags: list[str], out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import nas.relabel.stage as rt

    seen: list[list[int]] = []
    bases: list[torch.Tensor] = []
    orig_call, orig_end = rt.Relabeller.__call__, rt.Relabeller.end_epoch

    def call(self, epoch, step, idx, logits, targets):
        seen.append(idx.tolist())
        return orig_call(self, epoch, step, idx, logits, targets)

    avgs: list[torch.Tensor] = []

    def end(self, epoch):
        r = orig_end(self, epoch)
        bases.append(self.base.clone())
        avgs.append(self.avg.clone())
        return r

    rt.Relabeller.__call__, rt.Relabeller.end_epoch = call, end
    res = CLI.main(cli_args(*flags))
    torch.save({"seen": seen, "bases": bases, "avgs": avgs, "res": {k: v for k, v in res.items() if k != "relabel"}},
               Path(out) / f"rank{rank}.pt")


@pytest.mark.slow  # two spawned gloo processes
@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")
@pytest.mark.parametrize("rule", [("--relabel_threshold", "1.0", "--relabel_mode", "persistent"),
                                  ("--rule", "consensus", "--relabel_threshold", "0.1", "--consensus_epochs", "1",
                                   "--relabel_warmup", "0")], ids=["autofernet-persistent", "consensus"])
def test_ddp_two_gloo_ranks_agree_and_only_rank0_writes(toy, tmp_path, rule):
    run = tmp_path / "ddp_run"
    flags = [str(f) for f in _flags(toy, run, *rule, "--fes", "False", "--epochs", "2", "--batch_size", "8",
                                   "--device", "cpu")]
    spawn_ranks(_ddp_worker, (flags, str(tmp_path)), tmp_path)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    # disjoint shards, and the merged label tensors agree on both ranks every epoch
    for a, b in zip(r0["seen"], r1["seen"]):
        assert not set(a) & set(b)
    assert len(r0["bases"]) == 2 and all(torch.equal(a, b) for a, b in zip(r0["bases"], r1["bases"]))
    # the averaging rules' per-sample state is merged too: both ranks hold every training sample's average
    assert all(torch.equal(a, b) for a, b in zip(r0["avgs"], r1["avgs"]))
    if "consensus" in rule:
        assert int((r0["avgs"][-1].sum(1) > 0).sum()) == 96   # each rank saw only its shards
    assert r0["res"]["test_acc"] == r1["res"]["test_acc"] and r0["res"]["world_size"] == 2
    rows = read_csv_rows(run / "metrics.csv")
    last = safe_load(run / "last.pt")
    assert torch.equal(last["callbacks"]["relabel"]["base"], r0["bases"][-1].cpu())
    assert int(rows[1]["relabel_changed"]) == int((r0["bases"][1] != r0["bases"][0]).sum())
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["ddp_run", "rank0.pt", "rank1.pt"]   # rank 1 wrote no run folder of its own


# ----------------------------------------------------------------------------- SynthFER, 30 % noise
SYNTH_NOISY = ("--dataset", "synthfer", "--synth_size", "1500", "--synth_noise", "0.3", "--synth_difficulty", "0")


@pytest.fixture(scope="module")
def clean_base(tmp_path_factory):
    """A cnn_shallow trained on the *clean* labels of SynthFER faces whose training labels are
    30 % flipped (towards similar expressions): a stand-in for a model trained long enough on
    plenty of data, which on this CPU takes minutes (docs/relabelling.md has that measurement,
    from models trained on the noisy labels only)."""
    import dataclasses

    from nas.runtime.checkpoint import RunDir
    from nas.data import open_data
    from nas.models import build_model
    from nas.engine.trainer import TrainConfig, Trainer
    from nas.runtime.seeds import seed_everything

    tmp = tmp_path_factory.mktemp("clean_base")
    args = cli_args("--checkpoint", "x.pt", *SYNTH_NOISY)
    noisy = open_data("synthfer", size=args.synth_size, seed=args.data_seed, noise=args.synth_noise,
                      difficulty=args.synth_difficulty)
    train = noisy.split == 0
    assert float((noisy.labels[train] != noisy.clean_labels[train]).float().mean()) == pytest.approx(0.3, abs=0.01)
    oracle = dataclasses.replace(noisy, labels=noisy.clean_labels.clone())
    seed_everything(0)
    cfg = TrainConfig(epochs=8, batch_size=32, learning_rate=0.003, optimizer="adam", weight_decay=0.0,
                      progress=False, snapshot_at=[], log_interval=1000, eval_every=8)
    Trainer(build_model("cnn_shallow"), oracle, cfg, RunDir(tmp / "base", quiet=True),
            args={"arch": "cnn_shallow"}).fit()
    return tmp / "base" / "last.pt"


@pytest.mark.slow  # trains on a SynthFER export
@pytest.mark.parametrize("rule", [
    ("--relabel_threshold", "1.0"),
    ("--rule", "confident", "--relabel_threshold", "0.05"),
    ("--rule", "consensus", "--relabel_threshold", "0.05", "--consensus_epochs", "1"),
    ("--rule", "soft", "--soft_lambda", "0.9"),
], ids=["autofernet", "confident", "consensus", "soft"])
def test_machinery_each_rule_restores_more_than_it_harms_from_a_clean_model_on_synthfer(clean_base, tmp_path, rule):
    """The machinery, not the method's merit: one relabelling epoch on real SynthFER files
    from a model that knows the clean labels (``clean_base``). The hook must see the right
    samples' labels and the training forward's logits, and the counts of restored and harmed
    labels must come out right; a wrong index anywhere would make the changes random, and harm
    (70 % of the labels are clean) would exceed restoration.

    The reference rule at threshold 1.0 without the FES gate (any disagreement) because at
    0.2 SynthFER's flipped labels are mostly contradicted with a margin above 0.2, so the
    rule hardly sees them; the others at a small margin for the same reason. A near-zero
    learning rate because nearly every target becomes the model's own prediction, and
    training on those (self-training) drifts a small model within the epoch."""
    out = tmp_path / "relabel"
    run_cli("--checkpoint", clean_base, *SYNTH_NOISY, "--save", out, "--epochs", "1", *rule,
            "--relabel_warmup", "0", "--fes", "False", "--learning_rate", "1e-6",
            "--batch_size", "32", "--progress", "False", "--log_interval", "1000", "--plots", "False")
    row = read_csv_rows(out / "metrics.csv")[0]
    restored, harmed = int(row["relabel_restored"]), int(row["relabel_harmed"])
    assert restored > harmed + 25, row
    assert float(row["relabel_precision"]) > 50.0
    assert float(row["relabel_label_noise"]) < 30.0   # the labels trained on were cleaner than the data's
    assert sum(int(t["count"]) for t in read_csv_rows(out / TRANSITIONS_CSV)) == int(row["relabel_changed"])
