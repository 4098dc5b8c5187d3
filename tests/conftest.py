"""Test-wide settings: headless plots and one torch thread.

Tests use tiny tensors, for which one thread is faster and far more stable than
two when the machine is busy (seen: 20-50x slowdowns from thread contention)."""
import os

os.environ.setdefault("MPLBACKEND", "Agg")

import torch  # noqa: E402

torch.set_num_threads(1)


import pytest  # noqa: E402


def pytest_xdist_auto_num_workers(config):
    """``-n auto``: one worker per core, at most four (each imports torch; the tests are small)."""
    return max(1, min(os.cpu_count() or 1, 4))


@pytest.fixture(scope="session")
def installed(tmp_path_factory):
    """fer-nas installed (not editable) in a fresh environment (tests/installed.py)."""
    from tests.installed import install

    return install(tmp_path_factory.mktemp("install"))


@pytest.fixture(scope="session")
def quick_demo(installed):
    """``fernas demo --quick --out EMPTY/demo`` run once, from the installed copy in an empty folder:
    (the demo folder, the finished process)."""
    out = installed.empty / "demo"  # absolute: the demo tests resume it from the checkout
    r = installed.run("demo", "--quick", "--out", str(out))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out, r
