"""Batched augmentation, evaluation views, the batch sampler and the stratified split."""
from __future__ import annotations

import pytest
import torch
import torchvision.transforms.functional as TF

from nas.data.augment import BatchAugment, affine_crop, crop_flip, eval_views, normalize
from nas.data.loader import BatchSampler, class_balanced_weights, stratified_split
from nas.runtime.errors import FerNasError

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def images(b=6, size=48, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 1, size, size), generator=g, dtype=torch.uint8).to(device)


def gen(seed, device="cpu"):
    return torch.Generator(device=device).manual_seed(seed)


# ---------------------------------------------------------------- BatchAugment

@pytest.mark.parametrize("device", DEVICES)
def test_shapes_dtype_device_and_determinism(device):
    x = images(device=device)
    aug = BatchAugment(cutout=8)
    out = aug(x, gen(1, device))
    assert out.shape == (6, 1, 44, 44) and out.dtype == torch.float32 and out.device.type == device
    assert torch.equal(out, aug(x, gen(1, device)))
    assert not torch.equal(out, aug(x, gen(2, device)))


def test_crop_and_flip_match_a_hand_computed_crop():
    """With jitter and affine off, each output is exactly one crop (flipped or not) of its input;
    the offsets and flips really vary."""
    x = images(b=64, seed=3)
    aug = BatchAugment(crop=44, brightness=0, contrast=0, rotate=0, translate=0, scale=(1, 1), mean=0, std=1)
    out = aug(x, gen(4))
    seen = set()
    for b in range(64):
        matches = []
        for t in range(5):
            for l_ in range(5):
                ref = x[b, :, t:t + 44, l_:l_ + 44].float() / 255
                for flip in (False, True):
                    r = ref.flip(-1) if flip else ref
                    if torch.equal(out[b], r):
                        matches.append((t, l_, flip))
        assert len(matches) == 1, (b, matches)
        seen.add(matches[0])
    assert len({m[:2] for m in seen}) > 10 and {m[2] for m in seen} == {False, True}


def test_crop_flip_gather_by_hand():
    x = torch.arange(2 * 6 * 6, dtype=torch.uint8).view(2, 1, 6, 6)
    out = crop_flip(x, torch.tensor([1, 0]), torch.tensor([2, 1]), torch.tensor([False, True]), 3)
    assert out[0, 0].tolist() == [[8, 9, 10], [14, 15, 16], [20, 21, 22]]
    assert out[1, 0].tolist() == [[39, 38, 37], [45, 44, 43], [51, 50, 49]]


def test_affine_path_agrees_with_exact_transforms():
    x = images(b=4, seed=5)
    z, one = torch.zeros(4), torch.ones(4)
    top, left = torch.tensor([0, 1, 2, 4]), torch.tensor([4, 3, 0, 1])
    flip = torch.tensor([True, False, True, False])
    same = affine_crop(x, top, left, flip, 44, angle=z, scale=one, tx=z, ty=z)
    assert torch.allclose(same, crop_flip(x, top, left, flip, 44).float(), atol=1e-2)
    zero = torch.zeros(4, dtype=torch.long)
    no = torch.zeros(4, dtype=torch.bool)
    rot = affine_crop(x, zero, zero, no, 48, angle=torch.full((4,), 90.0), scale=one, tx=z, ty=z)
    assert torch.allclose(rot, torch.rot90(x.float(), 1, (2, 3)), atol=1e-2)  # counter-clockwise
    shift = affine_crop(x, zero, zero, no, 48, angle=z, scale=one, tx=torch.full((4,), 3.0), ty=z)
    assert torch.allclose(shift[..., 3:], x[..., :-3].float(), atol=1e-2) and (shift[..., :3] == 0).all()
    zoom = affine_crop(x, zero, zero, no, 48, angle=z, scale=torch.full((4,), 2.0), tx=z, ty=z)
    # scale 2 about the centre 23.5: output pixel 25 samples input 23.5 + 1.5 / 2 = 24.25 (bilinear)
    xf = x.float()
    want = (0.5625 * xf[..., 24, 24] + 0.1875 * xf[..., 24, 25] + 0.1875 * xf[..., 25, 24]
            + 0.0625 * xf[..., 25, 25])
    assert torch.allclose(zoom[..., 25, 25], want, atol=1e-2)
    ref = TF.affine(x.float(), angle=0.0, translate=[0, 0], scale=2.0, shear=[0.0],
                    interpolation=TF.InterpolationMode.BILINEAR)
    assert (zoom - ref)[..., 8:40, 8:40].abs().max() < 1.0


def test_brightness_contrast_and_cutout():
    x = torch.full((8, 1, 48, 48), 100, dtype=torch.uint8)
    x[:, :, :, 24:] = 200
    bright = BatchAugment(crop=48, flip=False, brightness=0.2, contrast=0, rotate=0, translate=0, scale=(1, 1),
                          mean=0, std=1)(x, gen(0))
    factor = bright[:, 0, 0, 0] / (100 / 255)
    assert torch.allclose(bright[:, 0, 0, 30], (200 / 255 * factor).clamp(max=1), atol=1e-6)
    assert ((factor >= 0.8 - 1e-6) & (factor <= 1.2 + 1e-6)).all() and factor.std() > 0.01
    contrast = BatchAugment(crop=48, flip=False, brightness=0, contrast=0.5, rotate=0, translate=0, scale=(1, 1),
                            mean=0, std=1)(x, gen(0))
    assert torch.allclose(contrast.mean(dim=(1, 2, 3)), torch.full((8,), 150 / 255), atol=1e-5)  # mean kept
    spread = contrast[:, 0, 0, 30] - contrast[:, 0, 0, 0]
    assert ((spread >= 0.5 * 100 / 255 - 1e-5) & (spread <= 1.5 * 100 / 255 + 1e-5)).all() and spread.std() > 0.01
    cut = BatchAugment(crop=48, flip=False, brightness=0, contrast=0, rotate=0, translate=0, scale=(1, 1),
                       cutout=10, mean=0.5, std=0.25)(torch.full((16, 1, 48, 48), 255, dtype=torch.uint8), gen(0))
    zeros = (cut == 0).sum(dim=(1, 2, 3))
    assert (zeros <= 100).all() and (zeros > 0).all() and (zeros == 100).any()
    assert ((cut == 0) | (cut == 2.0)).all()


def test_crop_larger_than_image_is_an_error():
    with pytest.raises(FerNasError, match="larger than"):
        BatchAugment(crop=50)(images(), gen(0))


# ---------------------------------------------------------------- evaluation views

def test_eval_views_match_torchvision():
    x = images(b=3, seed=6)
    ten = eval_views(x, "tencrop", 44)
    assert ten.shape == (10, 3, 1, 44, 44)
    assert torch.equal(ten, normalize(torch.stack(TF.ten_crop(x, 44))))
    centre = eval_views(x, "center", 40)
    assert centre.shape == (1, 3, 1, 40, 40) and torch.equal(centre[0], normalize(TF.center_crop(x, 40)))
    assert torch.equal(eval_views(x, "none")[0], normalize(x))
    assert torch.allclose(normalize(torch.tensor([0, 255], dtype=torch.uint8)), torch.tensor([-2.0, 2.0]))
    with pytest.raises(FerNasError):
        eval_views(x, "fivecrop")


# ---------------------------------------------------------------- batch sampler

def test_batch_sampler_covers_every_index_once_and_is_seeded():
    s = BatchSampler(torch.arange(10, 33), 5, generator=gen(0))
    batches = list(s)
    assert len(s) == len(batches) == 5 and [len(b) for b in batches] == [5, 5, 5, 5, 3]
    assert sorted(torch.cat(batches).tolist()) == list(range(10, 33))
    assert torch.cat(batches).tolist() != list(range(10, 33))
    g = gen(7)
    state = g.get_state()
    first = torch.cat(list(BatchSampler(23, 4, generator=g)))
    g.set_state(state)
    resumed = list(BatchSampler(23, 4, generator=g).iter_from(2))
    assert torch.equal(torch.cat(resumed), first[8:])
    dl = BatchSampler(23, 4, drop_last=True, shuffle=False)
    assert len(dl) == 5 and torch.equal(torch.cat(list(dl)), torch.arange(20))


def test_weighted_sampling_follows_the_weights():
    w = torch.tensor([0.0, 1.0, 0.0, 3.0])
    s = BatchSampler(torch.tensor([10, 11, 12, 13]), 4, weights=w, generator=gen(0))
    draws = torch.cat([torch.cat(list(s)) for _ in range(2000)])
    counts = torch.bincount(draws - 10, minlength=4)
    assert counts[0] == 0 and counts[2] == 0
    assert abs(counts[3] / counts[1] - 3.0) < 0.25
    labels = torch.tensor([0] * 90 + [1] * 10)
    bal = class_balanced_weights(labels)
    assert torch.isclose(bal[labels == 0].sum(), bal[labels == 1].sum())


# ---------------------------------------------------------------- stratified split

def test_stratified_split_keeps_class_proportions():
    labels = torch.tensor([0] * 100 + [1] * 50 + [2] * 10)[torch.randperm(160, generator=gen(1))]
    a, b = stratified_split(labels, 0.2, seed=3)
    assert torch.bincount(labels[b]).tolist() == [20, 10, 2]
    assert torch.bincount(labels[a]).tolist() == [80, 40, 8]
    assert sorted(torch.cat([a, b]).tolist()) == list(range(160))
    a2, b2 = stratified_split(labels, 0.2, seed=3)
    assert torch.equal(a, a2) and torch.equal(b, b2)
    assert not torch.equal(stratified_split(labels, 0.2, seed=4)[1], b)
    half_a, half_b = stratified_split(labels, 0.5, seed=0)
    assert torch.bincount(labels[half_b]).tolist() == [50, 25, 5]
