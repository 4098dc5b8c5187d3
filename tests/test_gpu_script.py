"""The device script (bench/gpu.py) end to end on the CPU at its smallest sizes, so that a session
lent a GPU can run it first thing: every section is measured, nothing is skipped for time, and
the JSON has the provenance, the projections and the verdict against the targets."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

pytestmark = pytest.mark.slow  # compiles FER_V1 (aot_eager) and runs four supernet variants: 1-2 minutes


def test_gpu_script_quick_on_cpu(tmp_path):
    import gpu

    out = tmp_path / "gpu.json"
    gpu.main(gpu.get_args_parser().parse_args(["--device", "cpu", "--quick", "--out", str(out), "--budget_s", "600"]))
    doc = json.loads(out.read_text())
    by_batch = doc["training"]["by_batch"]["4"]
    for variant in ("eager_fp32_reference", "eager_trainer", "compiled"):
        assert by_batch[variant]["images_per_s"] > 0, variant
    assert by_batch["compiled_graphs"] == {"skipped": "CUDA graphs need a GPU"}
    for key in ("first_order_start", "first_order_late", "second_order_start", "second_order_late"):
        assert doc["supernet"][key]["fast"]["step_ms"] > 0 and doc["supernet"][key]["naive"]["step_ms"] > 0, key
    assert doc["epochs"]["train"]["projected_600_epochs_min"] > 0
    assert doc["epochs"]["search"]["projected_50_epochs_min"] > 0
    assert doc["verdict"]["note"] == "a CPU smoke run: not the GPU's figures"
    assert "partial" not in doc  # the last write is the whole document
    assert doc["provenance"]["device"] == "cpu" and doc["provenance"]["flags"]["quick"] is True


def test_a_call_killed_midway_leaves_what_it_measured(tmp_path, monkeypatch):
    """The lease's limit kills the call: the training figures are already on disk, marked partial."""
    import gpu

    def killed(*a, **k):
        raise KeyboardInterrupt  # what the limit's signal would do here

    monkeypatch.setattr(gpu, "supernet", killed)
    out = tmp_path / "gpu.json"
    with pytest.raises(KeyboardInterrupt):
        gpu.main(gpu.get_args_parser().parse_args(["--device", "cpu", "--quick", "--out", str(out)]))
    doc = json.loads(out.read_text())
    assert doc["partial"] is True and doc["training"]["by_batch"]["4"]["eager_trainer"]["images_per_s"] > 0
    assert "supernet" not in doc and doc["provenance"]["flags"]["quick"] is True
