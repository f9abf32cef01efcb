"""The 48 cube symmetries: distinct, closed under composition, invertible, label/mask preserving."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mslesion.transforms import (
    N_SYMMETRIES,
    apply_symmetries,
    apply_symmetry,
    invert_symmetry,
    is_rotation,
    symmetry_from_matrix,
    symmetry_matrix,
)


@pytest.fixture(scope="module")
def asymmetric_cube() -> torch.Tensor:
    # Distinct values everywhere: two symmetries give the same output only if they are the same map.
    return torch.randperm(5**3, generator=torch.Generator().manual_seed(0)).reshape(5, 5, 5).float()


def test_all_48_symmetries_are_distinct(asymmetric_cube):
    images = {tuple(apply_symmetry(asymmetric_cube, k).flatten().tolist()) for k in range(N_SYMMETRIES)}
    assert len(images) == 48


def test_identity_is_index_zero(asymmetric_cube):
    assert torch.equal(apply_symmetry(asymmetric_cube, 0), asymmetric_cube)


def test_24_rotations_and_24_reflections():
    assert sum(is_rotation(k) for k in range(N_SYMMETRIES)) == 24


def test_closed_under_composition(asymmetric_cube):
    outputs = {tuple(apply_symmetry(asymmetric_cube, k).flatten().tolist()): k for k in range(N_SYMMETRIES)}
    for a in range(N_SYMMETRIES):
        for b in range(N_SYMMETRIES):
            composed = apply_symmetry(apply_symmetry(asymmetric_cube, a), b)
            assert tuple(composed.flatten().tolist()) in outputs, (a, b)


def test_matrix_representation_matches_tensor_action(asymmetric_cube):
    # Composition of tensors agrees with the product of the signed permutation matrices.
    for a, b in [(3, 17), (9, 40), (47, 47), (12, 5)]:
        product = symmetry_from_matrix(symmetry_matrix(b) @ symmetry_matrix(a))
        expected = apply_symmetry(apply_symmetry(asymmetric_cube, a), b)
        assert torch.equal(apply_symmetry(asymmetric_cube, product), expected)


def test_inverse(asymmetric_cube):
    for k in range(N_SYMMETRIES):
        assert torch.equal(apply_symmetry(apply_symmetry(asymmetric_cube, k), invert_symmetry(k)), asymmetric_cube)


def test_batched_application_equals_per_sample():
    batch = torch.randn(10, 2, 6, 6, 6, generator=torch.Generator().manual_seed(1))
    ks = torch.tensor([0, 5, 5, 47, 13, 0, 31, 8, 8, 2])
    out = apply_symmetries(batch, ks)
    for i, k in enumerate(ks.tolist()):
        assert torch.equal(out[i], apply_symmetry(batch[i], k))


def test_augmentation_preserves_mask_voxel_count_and_values():
    mask = (torch.rand(7, 7, 7, generator=torch.Generator().manual_seed(2)) > 0.7).float()
    for k in range(N_SYMMETRIES):
        moved = apply_symmetry(mask, k)
        assert moved.sum() == mask.sum()
        assert np.array_equal(np.sort(moved.flatten().numpy()), np.sort(mask.flatten().numpy()))


def test_non_cubic_batch_is_rejected():
    with pytest.raises(ValueError, match="cubic"):
        apply_symmetries(torch.zeros(2, 1, 4, 5, 4), torch.tensor([1, 2]))


@pytest.mark.parametrize("augment", ["full", "random", "flips", "none"])
def test_augmentation_groups_are_closed_under_composition(augment):
    # the mean image is averaged over a mode's symmetries: that average is invariant only if they form a group
    from mslesion.transforms import augmentation_symmetries, symmetry_from_matrix, symmetry_matrix

    group = range(augmentation_symmetries(augment))
    for a in group:
        for b in group:
            assert symmetry_from_matrix(symmetry_matrix(a) @ symmetry_matrix(b)) in group


def test_every_augment_option_has_a_group():
    # config may import only paper and errors, so the CLI's choices and the groups are two lists kept equal here
    from mslesion.config import AUGMENT_MODES
    from mslesion.transforms import AUGMENTATION_GROUPS

    assert set(AUGMENT_MODES) == set(AUGMENTATION_GROUPS)


def test_unknown_augmentation_mode_is_refused():
    from mslesion.transforms import augmentation_symmetries

    with pytest.raises(ValueError, match="augment must be one of"):
        augmentation_symmetries("rotations")
