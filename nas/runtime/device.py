"""Devices: ``--device auto|cpu|cuda|cuda:N`` and bf16 autocast."""
from __future__ import annotations

from contextlib import nullcontext

import torch

from nas.runtime.errors import FerNasError

__all__ = ["COMPILE_MODES", "COMPILE_BACKENDS", "resolve_device", "autocast", "memory_layout", "cpu_channels_last_unsafe", "compiled_graphs"]

#: torch.compile's modes (reduce-overhead adds CUDA graphs) and the backends the stages offer:
#: inductor generates kernels; aot_eager and eager do not (the tests count graphs and recompiles)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
COMPILE_BACKENDS = ("inductor", "aot_eager", "eager")


def resolve_device(name: str | None = "auto") -> torch.device:
    """``auto`` picks CUDA when present; ``cuda`` without a GPU is a clear error."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise FerNasError(f"--device {name!r}: unknown device (use auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise FerNasError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise FerNasError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) present")
    elif dev.type != "cpu":
        raise FerNasError(f"--device {name!r}: unsupported device type {dev.type!r} (use cpu or cuda)")
    return dev


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on ``device`` (CUDA or CPU) when ``enabled``, else a no-op. Callers
    enable it on CUDA by default and on CPU only when asked (``--amp True`` for
    training), so default CPU runs stay fp32 and exactly reproducible."""
    if enabled and device.type in ("cuda", "cpu"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def cpu_channels_last_unsafe(model: torch.nn.Module) -> bool:
    """True when ``model`` has a stride-2 1x1 convolution with fewer than 16 input channels.

    torch 2.14.1's multi-threaded CPU backward of such a convolution in channels_last
    corrupts the heap for some batch sizes (odd ones: 3, 21, 33 ... measured; the process
    dies with "double free" or a segfault), so such models stay contiguous on CPU unless
    torch runs one thread or ``--channels_last True`` is given."""
    return any(isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1) and m.stride == (2, 2)
               and m.in_channels < 16 for m in model.modules())


def memory_layout(model: torch.nn.Module, device: torch.device, amp: bool, requested: bool | None,
                  default: bool = True) -> tuple[bool, str]:
    """``(channels_last, note)`` for training ``model`` on ``device``: ``requested`` when
    given, else ``default`` unless a known CPU fault forbids it (``note`` says which).

    channels_last is the default on CPU too for training: oneDNN's NHWC kernels measured
    1.76x faster for FER_V1 C36 L12 b64 (bench/train_step.py), and as deterministic."""
    if requested is not None:
        return bool(requested), ""
    if not default or device.type != "cpu":
        return bool(default), ""
    if amp:
        # oneDNN's CPU bf16 weight gradient of dilated depthwise convs (dil_conv_*) comes out
        # wrong at 32x32 and larger maps in channels_last (torch 2.14.1: relative error ~1,
        # values up to 1e38); the contiguous layout is correct
        return False, " (off: CPU bf16 gets dilated-conv gradients wrong in channels_last)"
    if torch.get_num_threads() > 1 and cpu_channels_last_unsafe(model):
        return False, " (off: narrow stride-2 1x1 convs crash multi-threaded CPU backward in channels_last)"
    return True, ""


def compiled_graphs() -> int:
    """How many graphs torch.compile has compiled in this process (dynamo's count; each
    recompilation adds one)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])
