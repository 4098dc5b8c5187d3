"""The engine's shared pieces: named seed streams, early stopping on PublicTest, the resume
rule of the session."""
from __future__ import annotations

import json

import pytest
import torch

from nas.engine.trainer import Classification, Trainer
from nas.runtime.checkpoint import RunDir, read_csv_rows, safe_load
from nas.runtime.errors import FerNasError
from nas.runtime.seeds import STREAMS, stream_seed
from tests.test_train import cfg, make_data, tiny_model


def test_named_seed_streams_are_distinct_deterministic_and_init_is_the_seed():
    assert stream_seed(7, "init") == 7 and stream_seed(7, "init", rank=3) == 7
    seeds = {(name, rank): stream_seed(7, name, rank) for name in STREAMS if name != "init" for rank in range(4)}
    assert len(set(seeds.values())) == len(seeds)  # no two streams or ranks share a seed
    assert all(0 <= s < 2**63 for s in seeds.values())
    assert stream_seed(7, "augment", 1) == stream_seed(7, "augment", 1) != stream_seed(8, "augment", 1)
    with pytest.raises(ValueError, match="unknown seed stream"):
        stream_seed(7, "dropuot")


def test_patience_stops_after_n_epochs_without_a_better_public_test_accuracy(tmp_path, monkeypatch):
    """Scripted PublicTest accuracies 50, 60, 55, 60, 70: the best is epoch 2 (a tie is not
    better), and with --patience 2 the run ends after epoch 4, the selected epoch staying 2.
    A resume of the stopped run trains nothing more."""
    scripted = iter([50.0, 60.0, 55.0, 60.0, 70.0])
    real = Classification.evaluate

    def evaluate(self, which):
        out = real(self, which)
        return {**out, "acc": next(scripted)} if which == "val" else out

    monkeypatch.setattr(Classification, "evaluate", evaluate)
    data = make_data(32, 16, 16)
    tr = Trainer(tiny_model(), data, cfg(epochs=5, patience=2), RunDir(tmp_path / "r"), args={"arch": "FER_V1"})
    res = tr.fit()
    rows = read_csv_rows(tmp_path / "r" / "metrics.csv")
    assert [float(r["val_acc"]) for r in rows] == [50.0, 60.0, 55.0, 60.0]
    assert res["selected_epoch"] == 2 and res["epochs_trained"] == 4 and "epoch 4" in res["stopped_early"]
    assert json.loads((tmp_path / "r" / "results.json").read_text())["stopped_early"] == res["stopped_early"]
    assert safe_load(tmp_path / "r" / "best.pt")["epoch"] == 2 and safe_load(tmp_path / "r" / "last.pt")["epoch"] == 4
    again = Trainer(tiny_model(), data, cfg(epochs=5, patience=2), RunDir(tmp_path / "r", resume=True),
                    args={"arch": "FER_V1"})
    again.resume(tmp_path / "r")
    assert again.fit()["epochs_trained"] == 4 and len(read_csv_rows(tmp_path / "r" / "metrics.csv")) == 4
    with pytest.raises(FerNasError, match="--patience"):
        cfg(patience=-1)


def test_resume_rule_takes_the_runs_flags_and_only_the_resumable_ones_from_the_command_line(tmp_path):
    from nas.apps import train
    from nas.engine.session import RESUMABLE_FLAGS, resumed_args
    from tests.test_train import write_fer_csv

    csv = write_fer_csv(tmp_path / "fer2013.csv", make_data(32, 8, 8))
    run = tmp_path / "run"
    p = train.get_args_parser()
    train.main(p.parse_args(["--data", str(csv), "--arch", "cnn_shallow", "--epochs", "1", "--batch_size", "16",
                             "--save", str(run), "--plots", "False", "--progress", "False", "--snapshot_at", ""]))
    assert "data" in RESUMABLE_FLAGS and "learning_rate" not in RESUMABLE_FLAGS
    args, state = resumed_args(p.parse_args(["--resume", str(run), "--learning_rate", "3", "--data", "elsewhere.csv"]),
                               p, "train")
    assert args.learning_rate == 0.025 and args.arch == "cnn_shallow" and args.epochs == 1  # the run's
    assert args.data == "elsewhere.csv" and args.save == str(run) and state["epoch"] == 1
    args, _ = resumed_args(p.parse_args(["--resume", str(run)]), p, "train")
    assert args.data == str(csv)  # not given again: the run's
    with pytest.raises(FerNasError, match="written by the train stage, not relabel"):
        resumed_args(p.parse_args(["--resume", str(run)]), p, "relabel")
    with pytest.raises(FerNasError, match="nothing to resume"):
        resumed_args(p.parse_args(["--resume", str(tmp_path / "nope")]), p, "train")
    assert torch.is_tensor(state["model"][next(iter(state["model"]))])


def test_an_objective_with_only_what_the_loop_needs_runs_with_the_defaults(tmp_path):
    """Issue 36: ``Objective``'s display hooks and ``epoch_row``/``end_epoch`` have defaults, so a
    step, its batches and its state are all an objective must write."""
    from nas.engine.loop import Loop, Objective, StepResult
    from nas.runtime.distributed import single_process

    class LeastSquares(Objective):
        kind, sum_names = "test-least-squares", ("loss", "n")

        def __init__(self) -> None:
            torch.manual_seed(0)
            self.model = torch.nn.Linear(3, 1)
            self.opt = torch.optim.SGD(self.model.parameters(), lr=0.1)
            self.x = torch.randn(32, 3)
            self.y = self.x @ torch.tensor([[1.0], [-2.0], [0.5]])

        def epoch_batches(self, epoch, generator):
            return list(torch.randperm(32, generator=generator).split(8))

        def step(self, epoch, step, batch, ctx):
            self.opt.zero_grad()
            loss = torch.nn.functional.mse_loss(self.model(self.x[batch]), self.y[batch])
            loss.backward()
            bad = ctx.guard.flag(loss)
            ctx.guard.apply(self.opt, bad)
            return StepResult(torch.stack([loss.detach().double() * len(batch), torch.tensor(float(len(batch)),
                                                                                            dtype=torch.float64)]), bad)

        def state_dict(self):
            return {"model": self.model.state_dict(), "opt": self.opt.state_dict()}

        def load_state_dict(self, state):
            self.model.load_state_dict(state["model"])
            self.opt.load_state_dict(state["opt"])

    obj = LeastSquares()
    assert obj.progress({"loss": 8.0, "n": 4.0}) == {"loss": "2.000"} and obj.describe().startswith("LeastSquares: 4")
    Loop(obj, epochs=3, run=RunDir(tmp_path / "r"), dist=single_process(), seed=0, progress=False).fit()
    rows = read_csv_rows(tmp_path / "r" / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])             # the default row: the mean loss
    assert "epoch 3/3 | loss" in (tmp_path / "r" / "log.txt").read_text()  # the default epoch line
