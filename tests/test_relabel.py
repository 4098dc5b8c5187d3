"""The relabelling rule: hand-made rows at every boundary, the FES gate, agreement with
the per-sample loop, and the transition counts."""
import numpy as np
import pytest
import torch

from nas.runtime.errors import FerNasError
from nas.fes import DEFAULT_FES
from nas.relabel.rules import fes_gate, relabel, relabel_loop, relabel_mask, transition_counts

# Dyadic probabilities: every margin below is exact in float32, so "exactly the
# threshold" really is exact.
THRESHOLD = 0.25
ROWS = [
    # probs,                          target   why
    ([0.5, 0.375, 0.125], 1),         # 0: margin 0.125 inside (0, 0.25)        -> 0
    ([0.5, 0.25, 0.25], 1),           # 1: margin exactly the threshold          -> stays
    ([0.5, 0.5, 0.0], 1),             # 2: tie with the target, margin exactly 0 -> stays
    ([0.5, 0.125, 0.375], 2),         # 3: margin 0.125                          -> 0
    ([0.75, 0.125, 0.125], 1),        # 4: margin 0.625 above the threshold      -> stays
    ([0.25, 0.5, 0.25], 1),           # 5: prediction is the target              -> stays
    ([0.375, 0.375, 0.25], 2),        # 6: tie between two others: first wins    -> 0
    ([0.5, 0.2578125, 0.2421875], 1), # 7: margin 0.2421875, just under          -> 0
    ([0.375, 0.5, 0.125], 0),         # 8: margin 0.125                          -> 1
]
EXPECTED_NO_FES = [0, 1, 1, 0, 1, 1, 0, 0, 1]
# Asymmetric on purpose: the gate reads FES[target][pred].
FES3 = [[1.0, 0.03, 0.5],
        [0.04, 1.0, 0.01],
        [0.03, 0.5, 1.0]]
# Row 0: FES[1][0] = 0.04 > 0.03 -> moves. Rows 3, 6: FES[2][0] = 0.03, exactly the
# threshold -> stay. Row 7: FES[1][0] -> moves. Row 8: FES[0][1] = 0.03 -> stays.
EXPECTED_FES = [0, 1, 1, 2, 1, 1, 2, 0, 0]


def _rows(dtype=torch.float32):
    probs = torch.tensor([r for r, _ in ROWS], dtype=dtype)
    targets = torch.tensor([t for _, t in ROWS])
    return probs, targets


def test_hand_rows_without_fes():
    probs, targets = _rows()
    before = (probs.clone(), targets.clone())
    new, mask = relabel(probs, targets, THRESHOLD, return_mask=True)
    assert new.tolist() == EXPECTED_NO_FES
    assert new.dtype == torch.int64
    assert mask.tolist() == [a != b for a, b in zip(EXPECTED_NO_FES, targets.tolist())]
    assert torch.equal(probs, before[0]) and torch.equal(targets, before[1])  # inputs untouched
    assert relabel(probs, targets, THRESHOLD).tolist() == EXPECTED_NO_FES
    assert relabel_loop(probs, targets, THRESHOLD).tolist() == EXPECTED_NO_FES


@pytest.mark.parametrize("fes", [FES3, np.array(FES3), torch.tensor(FES3, dtype=torch.float64),
                                 torch.tensor(FES3, dtype=torch.float32)], ids=["list", "numpy", "tensor64", "tensor32"])
def test_hand_rows_with_fes(fes):
    probs, targets = _rows()
    new, mask = relabel(probs, targets, THRESHOLD, fes=fes, fes_threshold=0.03, return_mask=True)
    assert new.tolist() == EXPECTED_FES
    assert mask.tolist() == [a != b for a, b in zip(EXPECTED_FES, targets.tolist())]
    assert relabel_loop(probs, targets, THRESHOLD, fes, 0.03).tolist() == EXPECTED_FES


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_hand_rows_other_dtypes(dtype):
    # All the dyadic rows are exact in these dtypes too (bf16 has 8 mantissa bits).
    probs, targets = _rows(dtype)
    assert relabel(probs, targets, THRESHOLD).tolist() == EXPECTED_NO_FES
    assert relabel(probs, targets, THRESHOLD, FES3).tolist() == EXPECTED_FES


def test_fes_threshold_moves_the_gate():
    probs, targets = _rows()
    # Lower the FES threshold below 0.03: rows 3, 6 and 8 are now allowed to move.
    assert relabel(probs, targets, THRESHOLD, FES3, fes_threshold=0.02).tolist() == EXPECTED_NO_FES
    # Raise it to 0.04: FES[1][0] = 0.04 is no longer above it; nothing moves.
    assert relabel(probs, targets, THRESHOLD, FES3, fes_threshold=0.04).tolist() == targets.tolist()


def test_threshold_extremes():
    probs, targets = _rows()
    assert relabel(probs, targets, 0.0).tolist() == targets.tolist()
    # Above every margin: every row whose argmax beats its target moves (not the ties).
    assert relabel(probs, targets, 1.0).tolist() == [0, 0, 1, 0, 0, 1, 0, 0, 1]


def test_default_fes_gate_on_seven_classes():
    # angry(0)->happy(3): FES 0.0200 < 0.03, blocked; sad(4)->neutral(6): 0.138, allowed;
    # disgust(1)->fear(2): 0.0095, blocked; angry(0)->neutral(6): 0.058, allowed.
    probs = torch.zeros(4, 7)
    probs[0, [0, 3]] = torch.tensor([0.4, 0.6])
    probs[1, [4, 6]] = torch.tensor([0.4, 0.6])
    probs[2, [1, 2]] = torch.tensor([0.4, 0.6])
    probs[3, [0, 6]] = torch.tensor([0.4, 0.6])
    targets = torch.tensor([0, 4, 1, 0])
    assert relabel(probs, targets, 0.3).tolist() == [3, 6, 2, 6]
    assert relabel(probs, targets, 0.3, DEFAULT_FES).tolist() == [0, 6, 1, 6]


def test_nan_rows_change_nothing():
    probs = torch.tensor([[float("nan"), 0.5, 0.5], [0.6, 0.4, float("nan")], [0.6, 0.4, 0.0]])
    targets = torch.tensor([1, 1, 1])
    assert relabel(probs, targets, 0.5).tolist() == [1, 1, 0]


def test_agrees_with_per_sample_loop_on_random_batches():
    gen = torch.Generator().manual_seed(0)
    for n in (1, 7, 64, 300):
        probs = torch.softmax(2.0 * torch.randn(n, 7, generator=gen), dim=1)
        targets = torch.randint(0, 7, (n,), generator=gen)
        for fes in (None, DEFAULT_FES):
            for thr in (0.05, 0.2, 0.5):
                new, mask = relabel(probs, targets, thr, fes, 0.03, return_mask=True)
                assert torch.equal(new, relabel_loop(probs, targets, thr, fes, 0.03))
                assert torch.equal(mask, new != targets)
    # Enough rows changed in the big batches for the comparison to mean something.
    assert int(relabel(probs, targets, 0.2).ne(targets).sum()) > 20


def test_relabel_mask_returns_prediction():
    probs, targets = _rows()
    changed, pred = relabel_mask(probs, targets, THRESHOLD)
    assert pred.tolist() == [0, 0, 0, 0, 0, 1, 0, 0, 1]
    assert changed.dtype == torch.bool


def test_int32_targets_and_shapes():
    probs, targets = _rows()
    assert relabel(probs, targets.int(), THRESHOLD).tolist() == EXPECTED_NO_FES
    with pytest.raises(ValueError, match="N x K"):
        relabel(probs[0], targets, THRESHOLD)
    with pytest.raises(ValueError, match="targets must have shape"):
        relabel(probs, targets[:3], THRESHOLD)


def test_fes_shape_mismatch_is_a_user_error():
    probs, targets = _rows()
    with pytest.raises(FerNasError, match="FES matrix is"):
        relabel(probs, targets, THRESHOLD, DEFAULT_FES)  # 7x7 matrix, 3 classes
    with pytest.raises(FerNasError, match="FES matrix is"):
        relabel(probs, targets, THRESHOLD, torch.tensor(DEFAULT_FES))


def test_fes_gate_is_strict_and_follows_edits():
    fes = np.array(FES3)
    assert fes_gate(fes, 0.03, 3, "cpu").tolist() == [[True, False, True], [True, True, False], [False, True, True]]
    fes[0, 1] = 0.2  # an edited matrix gives its own gate
    assert fes_gate(fes, 0.03, 3, "cpu")[0, 1].item() is True
    probs = torch.tensor([[0.375, 0.5, 0.125]])
    assert relabel(probs, torch.tensor([0]), THRESHOLD, fes).tolist() == [1]


def test_transition_counts():
    old = torch.tensor([0, 0, 1, 2, 2, 2, 1])
    new = torch.tensor([0, 1, 1, 0, 0, 1, 1])
    counts = transition_counts(old, new, 3)
    assert counts.tolist() == [[0, 1, 0], [0, 0, 0], [2, 1, 0]]
    assert counts.dtype == torch.int64


def test_batched_rule_equals_the_per_sample_loop():
    """The whole-batch ops give the reference loop's labels: hand-made rows, every kind of
    FES matrix, NaN rows, float32 and float64, probabilities with autograd history."""
    probs, targets = _rows()
    for fes, expected in ((None, EXPECTED_NO_FES), (FES3, EXPECTED_FES), (torch.tensor(FES3), EXPECTED_FES)):
        new, mask = relabel(probs, targets, THRESHOLD, fes, 0.03, return_mask=True)
        assert new.tolist() == expected and new.dtype == torch.int64 and mask.dtype == torch.bool
        changed, pred = relabel_mask(probs, targets, THRESHOLD, fes, 0.03)
        assert changed.tolist() == mask.tolist() and pred.tolist() == [0, 0, 0, 0, 0, 1, 0, 0, 1]
    nan = torch.tensor([[float("nan"), 0.5, 0.5], [0.6, 0.4, float("nan")], [0.6, 0.4, 0.0]])
    assert relabel(nan, torch.tensor([1, 1, 1]), 0.5).tolist() == [1, 1, 0]
    gen = torch.Generator().manual_seed(1)
    for dtype in (torch.float32, torch.float64):
        probs = torch.softmax(2.0 * torch.randn(300, 7, generator=gen, dtype=dtype), dim=1)
        targets = torch.randint(0, 7, (300,), generator=gen)
        for fes in (None, DEFAULT_FES):
            new = relabel(probs, targets, 0.2, fes, 0.03)
            assert torch.equal(new, relabel_loop(probs, targets, 0.2, fes, 0.03))
            assert int(new.ne(targets).sum()) > 5
    grad = torch.softmax(torch.randn(8, 7, generator=gen, requires_grad=True), dim=1)  # as in a training step
    assert torch.equal(relabel(grad, targets[:8], 0.5),
                       relabel_loop(grad.detach(), targets[:8], 0.5))


def test_out_of_range_targets_are_errors_not_wrapped():
    probs, _ = _rows()
    for bad in (-1, 3):  # an index that wrapped around would silently compare the wrong class
        with pytest.raises(RuntimeError, match="out of bounds"):
            relabel(probs, torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, bad]), THRESHOLD)
