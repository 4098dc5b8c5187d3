"""DDP on CPU: two gloo processes train a tiny FER_V1; ranks end with identical weights,
see disjoint shards of every batch, and only rank 0 writes files."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from tests.ddp_util import spawn_ranks

pytestmark = pytest.mark.slow  # two spawned gloo processes


class _Record:
    """Target hook that records which dataset indices this rank trained on."""

    def __init__(self):
        self.seen: list[list[int]] = []

    def __call__(self, epoch, step, idx, logits, targets):
        self.seen.append(idx.tolist())
        return targets


def _worker(rank: int, world: int, port: int, out: str, robust: str = "none") -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from nas.runtime.checkpoint import RunDir
    from nas.runtime.distributed import cleanup, init_distributed
    from nas.engine.trainer import Trainer
    from tests.test_train import cfg, make_data, tiny_model

    info = init_distributed("cpu")
    ok = False  # the closing barrier only on success: a failed rank must not wait for its peer
    try:
        assert info.world_size == world and info.rank == rank and dist.get_backend() == "gloo"
        model = tiny_model()
        torch.manual_seed(1000 + rank)  # different drop-path masks per rank, as train_searched.py does
        rec = _Record()
        run = RunDir(Path(out) / f"run_rank{rank}", enabled=info.is_main)
        tr = Trainer(model, make_data(64, 16, 16), cfg(epochs=2, batch_size=8, robust=robust), run, dist=info,
                     target_hook=rec,
                     args={"arch": "FER_V1"})
        res = tr.fit()
        torch.save({"model": {k: v.clone() for k, v in model.state_dict().items()}, "seen": rec.seen, "res": res},
                   Path(out) / f"rank{rank}.pt")
        ok = True
    finally:
        cleanup(barrier=ok)


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")
@pytest.mark.parametrize("robust", ["none", "eac", "smallloss"])
def test_two_gloo_ranks_agree_and_only_rank0_writes(tmp_path, robust):
    """Plain training and each --robust method (EAC's two forward passes go through DDP's forward)."""
    spawn_ranks(_worker, (str(tmp_path), robust), tmp_path)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=False)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=False)
    diff = [k for k in r0["model"] if not torch.equal(r0["model"][k], r1["model"][k])]
    assert not diff, diff[:5]
    # every step: per-rank batch of 8, shards disjoint, together one global batch of 16
    assert len(r0["seen"]) == len(r1["seen"]) == 2 * 4
    for a, b in zip(r0["seen"], r1["seen"]):
        assert len(a) == len(b) == 8 and not set(a) & set(b)
    per_epoch = [set(sum(r0["seen"][e * 4:(e + 1) * 4], []) + sum(r1["seen"][e * 4:(e + 1) * 4], [])) for e in (0, 1)]
    assert per_epoch[0] == per_epoch[1] == set(range(64))  # each epoch covers the Training split once
    # figures were all-reduced: both ranks report the same result
    assert r0["res"]["test_acc"] == r1["res"]["test_acc"] and r0["res"]["world_size"] == 2
    assert {"last.pt", "best.pt", "metrics.csv", "results.json"} <= {p.name for p in (tmp_path / "run_rank0").iterdir()}
    assert not (tmp_path / "run_rank1").exists()
