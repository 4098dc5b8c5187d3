"""DDP search on CPU: two gloo processes run a tiny SGAS search; ranks end with identical
weights, architecture weights, batch-norm statistics, decisions and genotype, train on
disjoint shards of every batch, and only rank 0 writes files."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from tests.ddp_util import spawn_ranks

pytestmark = pytest.mark.slow  # two spawned gloo processes


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), FERNAS_GENOTYPES=str(Path(out) / f"genos_rank{rank}"))
    torch.set_num_threads(1)
    from nas.runtime.distributed import cleanup, init_distributed
    from tests.test_search import SGAS_FLAGS, searcher, tiny_args, tiny_data

    info = init_distributed("cpu")
    ok = False  # the closing barrier only on success: a failed rank must not wait for its peer
    try:
        assert info.world_size == world and dist.get_backend() == "gloo"
        # per-rank batch 4: the global batch of 8 matches the single-process tiny searches
        args = tiny_args(Path(out) / f"run_rank{rank}", *SGAS_FLAGS, "--batch_size", "4", "--export", "DDP_1")
        s = searcher(args, tiny_data(112))
        seen: list[tuple[int, list[int]]] = []  # the dataset indices each rank's batches hold
        real_batch = s.objective._batch

        def recording(idx, gen):
            seen.append((s.loop.epoch, idx[rank::world].tolist()))
            return real_batch(idx, gen)

        s.objective._batch = recording
        arch0 = [p.detach().clone() for p in s.model.arch_parameters()]
        res = s.run()
        torch.save({"model": {k: v.clone() for k, v in s.model.state_dict().items()},
                    "arch": [p.detach().clone() for p in s.model.arch_parameters()], "arch0": arch0,
                    "edge_state": {k: list(map(int, v)) for k, v in s.model.edge_state.items()},
                    "genotype": res["genotype"], "seen": seen, "w_idx": s.w_idx.tolist(),
                    "arch_idx": s.arch_idx.tolist(), "complete": res["complete"]},
                   Path(out) / f"rank{rank}.pt")
        ok = True
    finally:
        cleanup(barrier=ok)


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")
def test_two_gloo_ranks_search_identically_and_only_rank0_writes(tmp_path):
    spawn_ranks(_worker, (str(tmp_path),), tmp_path)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=False)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=False)
    # identical weights, batch-norm statistics and architecture weights, bit for bit
    diff = [k for k in r0["model"] if not torch.equal(r0["model"][k], r1["model"][k])]
    assert not diff, diff[:5]
    assert all(torch.equal(a, b) for a, b in zip(r0["arch"], r1["arch"]))
    # the architecture weights did move (the test would pass vacuously otherwise)
    assert all((a - a0).abs().max() > 1e-3 for a, a0 in zip(r0["arch"], r0["arch0"]))
    assert r0["edge_state"] == r1["edge_state"] and r0["genotype"] == r1["genotype"] and r0["complete"]
    # data sharded: same number of steps, per-rank batch of 4, disjoint shards from the right half
    assert len(r0["seen"]) == len(r1["seen"]) > 0
    w_idx, arch_idx = set(r0["w_idx"]), set(r0["arch_idx"])
    for k, ((e0, a), (e1, b)) in enumerate(zip(r0["seen"], r1["seen"])):
        assert e0 == e1 and len(a) == len(b) == 4 and not set(a) & set(b)
        assert set(a) | set(b) <= (w_idx if k % 2 == 0 else arch_idx)  # train batch, then architecture batch
    # only rank 0 wrote: the run directory and the exported genotype
    names = {p.name for p in (tmp_path / "run_rank0").iterdir()}
    assert {"last.pt", "metrics.csv", "alphas.csv", "genotype.json", "log.txt", "config.yaml"} <= names
    assert (tmp_path / "genos_rank0" / "DDP_1.json").is_file()
    assert not (tmp_path / "run_rank1").exists() and not (tmp_path / "genos_rank1").exists()
