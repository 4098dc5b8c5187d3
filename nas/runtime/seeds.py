"""Seeds: every random stream of a run comes from ``--seed`` and a stream name.

A run draws randomness from a few streams, each a seeded generator of its own, so that
adding a draw to one never shifts another and resume can restore each exactly:

==========  ======================================  ========================================
stream      what draws from it                      per rank?
==========  ======================================  ========================================
``init``    model weights (the global RNG before    no: every rank builds the same model
            the model is built)
``dropout`` dropout and drop-path masks (the        yes
            global RNG once the model exists)
``sample``  the order of the batches                no: ranks slice one global batch
``augment`` crops, flips, jitter, cutout            yes
``split``   seeded held-out splits (search halves)  no
==========  ======================================  ========================================

:func:`stream_seed` derives each stream's seed from ``(seed, name, rank)`` with BLAKE2b,
so no two streams (or ranks) share a seed and no offset constant has to be remembered;
``init`` is ``seed`` itself, so ``--seed 0`` builds the model ``torch.manual_seed(0)``
builds.
"""
from __future__ import annotations

import hashlib
import random
from typing import Any

import numpy as np
import torch

__all__ = ["STREAMS", "stream_seed", "stream_generator", "seed_everything", "reseed_global", "make_generator",
           "get_rng_state", "set_rng_state"]

#: The named streams (see the module docstring).
STREAMS = ("init", "dropout", "sample", "augment", "split")


def stream_seed(seed: int, name: str, rank: int = 0) -> int:
    """The seed of stream ``name`` for ``rank``: ``seed`` for ``init``, else a 63-bit
    BLAKE2b digest of ``"seed/name/rank"``."""
    if name not in STREAMS:
        raise ValueError(f"unknown seed stream {name!r} (streams: {', '.join(STREAMS)})")
    if name == "init":
        return int(seed)
    digest = hashlib.blake2b(f"{int(seed)}/{name}/{int(rank)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def stream_generator(seed: int, name: str, device: torch.device | str = "cpu", rank: int = 0) -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded for stream ``name`` of ``rank``."""
    return make_generator(stream_seed(seed, name, rank), device)


def reseed_global(seed: int, name: str = "dropout", rank: int = 0) -> None:
    """Seed the global torch RNG for stream ``name`` (after the model is built, so that
    dropout and drop-path masks differ between ranks and do not depend on how many
    draws building the model took)."""
    s = stream_seed(seed, name, rank)
    torch.manual_seed(s)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(s)


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA). With ``deterministic``, ask cuDNN
    for reproducible kernels (costs a little speed on GPU, nothing on CPU)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cudnn.deterministic = deterministic


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch.Generator seeded with ``seed`` on ``device`` (for batched augmentation
    and shuffling without touching the global RNG)."""
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


def get_rng_state() -> dict[str, Any]:
    """Global RNG states as tensors and plain values (safe for ``weights_only`` loading)."""
    py = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` captured."""
    if "python" in state:
        v, s, g = state["python"]
        random.setstate((v, tuple(s), g))
    if "numpy" in state:
        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


