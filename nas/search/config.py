"""The search stage's settings: :class:`SearchConfig`, its flags and the rules between them.

Defaults are written once, in the dataclass (the reference's values); :func:`add_search_args`
reads them, and every rule between flags lives in :meth:`SearchConfig.__post_init__`, so a
config built from the command line, a ``--config`` file or code is checked the same way, before
any run folder exists. Data and run flags (``--data``, ``--device``, ``--nan_policy`` ...) come
from :mod:`nas.data` and :mod:`nas.engine.session`; ``--export`` and ``--plots`` are outputs.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, fields
from typing import Any, Mapping

from nas.engine.optim import check_optimizer_settings
from nas.models.ops import SEARCH_SPACES, search_space
from nas.runtime.device import COMPILE_BACKENDS, COMPILE_MODES
from nas.runtime.errors import FerNasError

__all__ = ["STRATEGIES", "ZC_PROXIES", "SearchConfig", "add_search_args", "search_config", "check_args"]

STRATEGIES = ("sgas", "darts", "beta_darts", "darts_minus", "random", "zero_cost")
ZC_PROXIES = ("naswot", "synflow", "snip", "grad_norm", "jacob_cov", "vote")


@dataclass
class SearchConfig:
    """Everything a search needs besides the data and the run; defaults are the reference's."""

    strategy: str = "sgas"
    zc_samples: int = 100
    zc_proxy: str = "vote"
    zc_min_params: int = 0
    zc_max_params: int = 0
    beta_decay_slope: float = 0.5
    aux_skip_start: float = 1.0
    search_space: str = "auto_fernet"
    batch_size: int = 24
    batch_increase: int = 8
    learning_rate: float = 0.025
    learning_rate_min: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 3e-4
    init_channels: int = 16
    layers: int = 8
    seed: int = 2
    grad_clip: float = 5.0
    train_portion: float = 0.5
    unrolled: bool = False
    compile: bool = False
    compile_mode: str = "default"
    compile_backend: str = "inductor"
    fused: bool | None = None
    arch_learning_rate: float = 3e-4
    arch_weight_decay: float = 1e-3
    complexity_weight: float = 0.0
    partial_channels: int = 1
    warmup_dec_epoch: int = 9
    decision_freq: int = 5
    use_history: bool = False
    history_size: int = 4
    epochs_after_last_decision: int = 5
    epochs: int | None = None         # darts strategies only (None: 50); SGAS derives its own
    post_val: bool = False
    crop: int = 44
    cutout: bool = False
    cutout_length: int = 16

    def __post_init__(self) -> None:
        """The rules between the flags: one-line errors naming the flag."""
        for name, choices in (("strategy", STRATEGIES), ("zc_proxy", ZC_PROXIES), ("compile_mode", COMPILE_MODES),
                              ("compile_backend", COMPILE_BACKENDS)):
            if getattr(self, name) not in choices:
                raise FerNasError(f"--{name} {getattr(self, name)!r}: choose from {', '.join(choices)}")
        if self.batch_size < 1:
            raise FerNasError(f"--batch_size {self.batch_size}: must be >= 1")
        check_optimizer_settings(learning_rate=self.learning_rate, learning_rate_min=self.learning_rate_min,
                                 momentum=self.momentum, weight_decay=self.weight_decay, grad_clip=self.grad_clip,
                                 arch_learning_rate=self.arch_learning_rate, arch_weight_decay=self.arch_weight_decay)
        for name, ok, want in (("complexity_weight", self.complexity_weight >= 0, ">= 0"),
                               ("partial_channels", self.partial_channels >= 1, ">= 1")):
            if not ok:
                raise FerNasError(f"--{name} {getattr(self, name)}: must be {want}")
        if self.batch_increase < 0:
            raise FerNasError(f"--batch_increase {self.batch_increase}: must be >= 0")
        if not 0.0 < self.train_portion < 1.0:
            raise FerNasError(f"--train_portion {self.train_portion}: must be between 0 and 1")
        if self.decision_freq < 1:
            raise FerNasError(f"--decision_freq {self.decision_freq}: must be >= 1")
        for name in ("warmup_dec_epoch", "epochs_after_last_decision", "history_size", "cutout_length"):
            if getattr(self, name) < 0:
                raise FerNasError(f"--{name} {getattr(self, name)}: must be >= 0")
        search_space(self.search_space)
        if self.init_channels < 1 or self.layers < 3:
            raise FerNasError("--init_channels must be >= 1 and --layers >= 3")
        if self.crop < 8:
            raise FerNasError(f"--crop {self.crop}: must be at least 8")
        if self.beta_decay_slope < 0 or self.aux_skip_start < 0:
            raise FerNasError("--beta_decay_slope and --aux_skip_start must be >= 0")
        if self.zc_samples < 2:
            raise FerNasError(f"--zc_samples {self.zc_samples}: sample at least 2 cells")
        if self.zc_min_params < 0 or self.zc_max_params < 0 or \
                (self.zc_max_params and self.zc_min_params > self.zc_max_params):
            raise FerNasError(f"--zc_min_params {self.zc_min_params} / --zc_max_params {self.zc_max_params}: "
                              "need 0 <= min <= max (0: no bound)")
        if (self.zc_min_params or self.zc_max_params) and self.strategy != "zero_cost":
            raise FerNasError("--zc_min_params / --zc_max_params apply to --strategy zero_cost")
        if self.epochs is not None:
            if self.strategy in ("zero_cost", "random"):
                raise FerNasError(f"--epochs: --strategy {self.strategy} trains nothing")
            if self.strategy == "sgas":
                raise FerNasError("--epochs applies to --strategy darts; SGAS derives its epochs from "
                                  "--warmup_dec_epoch, --decision_freq and --epochs_after_last_decision")
            if self.epochs < 1:
                raise FerNasError(f"--epochs {self.epochs}: must be >= 1")


def search_config(args: argparse.Namespace | Mapping[str, Any]) -> SearchConfig:
    """The :class:`SearchConfig` of parsed flags (other keys ignored), checked."""
    d = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    names = {f.name for f in fields(SearchConfig)}
    return SearchConfig(**{k: v for k, v in d.items() if k in names})


def check_args(args: argparse.Namespace) -> None:
    """One-line errors for flag values that cannot work (before any data is read or folder made)."""
    from nas.models.genotypes import check_export_name

    search_config(args)
    if getattr(args, "export", None) is not None:
        check_export_name(args.export, args.force)  # fail now, not after hours of search


def add_search_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags of ``search.py``: the reference's names, defaults from :class:`SearchConfig`."""
    from nas.runtime.cli import config_flag_adder, str2bool

    g = parser.add_argument_group("search")
    add = config_flag_adder(g, SearchConfig)

    add("--strategy", choices=STRATEGIES,
        help="sgas: greedy edge decisions; darts: train all epochs, DARTS genotype rule; beta_darts / darts_minus: "
             "darts with beta-decay / an auxiliary skip (against collapse); random: sample a cell, no training; "
             "zero_cost: score random cells at initialisation")
    add("--zc_samples", type=int,
        help="zero_cost: random cells scored at initialisation (each built at --init_channels/--layers)")
    add("--zc_proxy", choices=ZC_PROXIES, help="zero_cost: the proxy that keeps a cell, or vote (best mean rank over the five)")
    add("--zc_min_params", type=int,
        help="zero_cost: sample only cells whose network (at --init_channels/--layers, no auxiliary head) has at "
             "least this many parameters (0: no bound); the proxies grow with size, so a budget keeps the "
             "comparison with size-matched cells fair")
    add("--zc_max_params", type=int,
        help="zero_cost: sample only cells whose network has at most this many parameters (0: no bound)")
    add("--beta_decay_slope", type=float,
        help="beta_darts: the Beta-Decay weight is this x epoch (0-based; the authors' code: 50 x epoch/100)")
    add("--aux_skip_start", type=float,
        help="darts_minus: auxiliary skip weight at the first epoch, decaying linearly to 0 at the last")
    add("--search_space", help=f"candidate operations per edge: {', '.join(SEARCH_SPACES)}, or a comma-separated "
                               "list of operation names")
    add("--batch_size", type=int, help="initial batch size (per process)")
    add("--batch_increase", type=int, help="batch size increase after each decision (0: fixed)")
    add("--learning_rate", type=float, help="initial weight learning rate")
    add("--learning_rate_min", type=float, help="final learning rate (cosine)")
    add("--momentum", type=float, help="weight optimizer (SGD) momentum")
    add("--weight_decay", type=float, help="weight decay of the weights")
    add("--init_channels", type=int, help="supernet channels")
    add("--layers", type=int, help="cells in the supernet (reductions at L/3 and 2L/3)")
    add("--seed", type=int, help="seed of the halves, the supernet and every random stream (reference: 2)")
    add("--grad_clip", type=float, help="weight gradient norm clip (0: off)")
    add("--train_portion", type=float, help="fraction of Training for the weights (the rest trains the architecture)")
    add("--unrolled", action="store_true", help="second-order (unrolled) architecture gradient")
    add("--compile", type=str2bool, nargs="?", const=True,
        help="torch.compile the supernet (recompiles once per SGAS decision: the decided edges change the graph)")
    add("--compile_mode", choices=COMPILE_MODES, help="torch.compile mode (reduce-overhead: CUDA graphs)")
    add("--compile_backend", choices=COMPILE_BACKENDS,
        help="inductor, or aot_eager / eager (no code generation: to check graphs and recompiles)")
    add("--fused", type=str2bool,
        help="fused optimizer kernels, which skip a non-finite step without a host sync (default: on CUDA)")
    add("--arch_learning_rate", type=float, help="architecture optimizer (Adam) learning rate")
    add("--arch_weight_decay", type=float, help="architecture weight decay")
    add("--complexity_weight", type=float,
        help="weight of the expected-parameter-cost regulariser over all edges (0: off)")
    add("--partial_channels", type=int, help="PC-DARTS: 1/K of the channels through the mixed ops, edge "
                                             "normalisation (1: off)")
    add("--warmup_dec_epoch", type=int, help="first decision epoch (sgas)")
    add("--decision_freq", type=int, help="epochs between decisions (sgas)")
    add("--use_history", action="store_true", help="SGAS criterion 2 (histogram intersection)")
    add("--history_size", type=int, help="epochs of history for criterion 2 (sgas)")
    add("--epochs_after_last_decision", type=int, help="post-train epochs (sgas)")
    add("--epochs", type=int, help="epochs for --strategy darts (default 50); sgas derives its own count")
    add("--post_val", action="store_true", help="evaluate on the architecture half after each epoch")
    add("--crop", type=int, help="random-crop size (images are padded-free crops)")
    add("--cutout", action="store_true", help="cutout augmentation")
    add("--cutout_length", type=int, help="cutout square side")
    g.add_argument("--export", default=None, metavar="NAME", help="also write genotypes/NAME.json")
    g.add_argument("--plots", type=str2bool, default=True,
                   help="draw search.png (curves, parameter-free share) after every epoch and "
                        "cell_normal.png / cell_reduce.png at the end")
    return parser
