"""Test-wide settings: headless plots and one torch thread.

Tests use tiny tensors, for which one thread is faster and far more stable than
two when the machine is busy (seen: 20-50x slowdowns from thread contention)."""
import os

os.environ.setdefault("MPLBACKEND", "Agg")

import torch  # noqa: E402

torch.set_num_threads(1)
