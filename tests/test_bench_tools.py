"""Small helpers of bench/: the CPU model that speed figures name, the render-speed rounds of
bench/synthfer_difficulty.py --speed_only, and that bench's linear baseline."""
from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import common  # noqa: E402
import synthfer_difficulty as sd  # noqa: E402

from nas.runtime.cli import run  # noqa: E402


def test_cpu_model_reads_the_model_name(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Example CPU @ 2.10GHz\nflags\t: fpu\n")
    assert common.cpu_model(info) == "Example CPU @ 2.10GHz"
    assert common.cpu_model(tmp_path / "absent") == (platform.processor() or platform.machine())


def test_speed_in_turns_summarises_by_hand(monkeypatch):
    """bench/synthfer_difficulty.py --speed_only: rounds taken in turns, summarised against the
    2,000 faces/s target (render_speed replaced by fixed figures)."""
    figures = iter([2500, 5000, 1800, 4500, 2100, 6000])
    calls = []

    def fake(n, difficulty, renderer):
        calls.append(renderer)
        return {"wall": 0, "cpu_time": next(figures)}

    monkeypatch.setattr(sd, "render_speed", fake)
    out = sd.main(sd.get_args_parser().parse_args(["--speed_only", "--against", "v1", "--rounds", "3"]))
    assert calls == ["v2", "v1"] * 3
    assert out["faces_per_s"] == {"v2": [2500, 1800, 2100], "v1": [5000, 4500, 6000]}
    assert out["summary"]["v2"] == {"min": 1800, "median": 2100, "max": 2500}
    assert out["rounds_at_target"] == 2 and out["ratio_per_round"] == [0.5, 0.4, 0.35]


def test_speed_only_refuses_a_bad_request(capsys):
    for argv in (["--rounds", "0"], ["--against", "v2"]):
        with pytest.raises(SystemExit) as e:
            run(sd.main, sd.get_args_parser(), ["--speed_only", *argv])
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "bench/synthfer_difficulty.py" in err[0], err


def test_linear_baseline_does_not_depend_on_the_global_generator():
    """The linear baseline of bench/synthfer_difficulty.py gives the same accuracy whatever the
    global torch generator holds (it used to start from nn.Linear's random weights)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(300, 1, 6, 6, generator=g)
    y = torch.randint(0, 7, (300,), generator=g)
    x[:, 0, 0, 0] += y * 0.05                      # a weak cue, so that a few steps matter
    accs = []
    for s in (1, 2, 3):
        torch.manual_seed(s)
        accs.append(sd.linear(x[:200], y[:200], x[200:], y[200:], steps=2))
    assert accs[0] == accs[1] == accs[2]


def test_a_second_bench_run_in_the_same_folder_is_refused(tmp_path):
    """Two grids writing rows into one folder corrupt both (seen: a restarted grid beside the
    workers of the stopped one); the folder lock refuses the second in one line."""
    from common import FolderLock

    from nas.runtime.errors import FerNasError

    with FolderLock(tmp_path / "g"):
        with pytest.raises(FerNasError, match=r"another bench run is using this folder \(pid \d+\)"):
            with FolderLock(tmp_path / "g"):
                pass
    with FolderLock(tmp_path / "g"):  # released with its holder
        pass


def test_pool_workers_die_with_the_bench(tmp_path):
    """A bench killed with SIGKILL takes its pool workers with it (they would go on writing)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "bench_like.py"
    script.write_text(
        "import os, sys, time\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parents[1] / 'bench')!r})\n"
        "from common import process_pool\n"
        "def work():\n"
        "    time.sleep(60)\n"
        "def pid():\n"
        "    return os.getpid()\n"
        "if __name__ == '__main__':\n"
        "    with process_pool(1) as pool:\n"
        "        print(pool.submit(pid).result(), flush=True)\n"
        "        pool.submit(work).result()\n")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    worker = int(proc.stdout.readline())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(worker, signal.SIGKILL)
    pytest.fail("the pool worker outlived the killed bench")


def test_the_demo_bench_refuses_a_used_folder_and_records_provenance(tmp_path, monkeypatch):
    """bench/demo.py times a demo from scratch: a folder with anything in it is refused in one line
    (exit 2) before a file is written; a finished demo's stages go to --out with the provenance
    that demo.json lacks (the demo itself is checked by tests/test_demo.py; here it is replaced)."""
    import subprocess

    used = tmp_path / "used"
    used.mkdir()
    (used / "keep.txt").write_text("mine")
    out = tmp_path / "r.json"
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "demo.py"), "--run_dir", str(used), "--out", str(out)],
                       capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 2 and "not an empty folder" in p.stderr and "Traceback" not in p.stderr
    assert not out.exists() and (used / "keep.txt").read_text() == "mine"

    import demo as demo_bench

    import nas.apps.demo as app

    seen = {}

    def fake_run_demo(run_dir, **kw):
        seen.update(kw, run_dir=str(run_dir))
        return {"config": {"quick": kw["quick"], "seed": kw["seed"]}, "stages": {"relabel": {"test_acc": 0.5}},
                "commands": ["python relabel_training.py"]}

    monkeypatch.setattr(app, "run_demo", fake_run_demo)
    args = demo_bench.get_args_parser().parse_args(["--quick", "--run_dir", str(tmp_path / "new"), "--out", str(out)])
    doc = demo_bench.main(args)
    assert seen["quick"] is True and seen["device"] == "cpu" and seen["run_dir"] == str(tmp_path / "new")
    written = json.loads(out.read_text())
    assert written["stages"] == {"relabel": {"test_acc": 0.5}} and written == json.loads(json.dumps(doc))
    assert written["provenance"]["flags"]["quick"] is True and written["provenance"]["torch"]


def test_wrong_labels_by_class_against_the_flips_counted_by_hand():
    """bench/ferplus_noise.py's per-class table: the wrong share of each class and its commonest
    wrong label, recounted here from flip_labels with the same generator; ferplus noise at 40 %
    leaves fear with more wrong labels than right ones, uniform noise at 10 % no class."""
    import numpy as np

    import ferplus_noise
    from nas.data.dataset import FER_CLASSES
    from nas.data.synthfer import FER_TRAIN_COUNTS, class_counts, flip_labels

    out = ferplus_noise.wrong_by_class(2000, [0.1, 0.4])
    labels = np.repeat(np.arange(7), class_counts(2000, FER_TRAIN_COUNTS))
    noisy = flip_labels(labels, 0.4, np.random.default_rng([0, 5]), mode="ferplus")
    fear = FER_CLASSES.index("fear")
    given = noisy[labels == fear]
    row = out["ferplus 40 %"]["by_class"]["fear"]
    assert row["wrong_pct"] == round(100 * float((given != fear).mean()), 1)
    counts = np.bincount(given, minlength=7)
    counts[fear] = -1
    assert row["commonest_wrong"] == FER_CLASSES[int(counts.argmax())]
    assert "fear" in out["ferplus 40 %"]["majority_wrong"]
    assert out["uniform 10 %"]["majority_wrong"] == [] and out["uniform 10 %"]["plurality_wrong"] == []
