"""Mask selection is exact per comparison group and N:M-valid; bad targets are rejected."""

import re

import pytest
import torch

from prunekit.errors import ArgumentError
from prunekit.sparsity import SparsityTarget, check_nm, lowest_mask, nm_mask, parse_pattern, prune_count, select_mask


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 0.37, 0.9])
def test_lowest_mask_exact_per_matrix_and_row(fraction):
    scores = torch.randn(37, 53, generator=torch.Generator().manual_seed(1))
    per_matrix = lowest_mask(scores, fraction, per_row=False)
    assert int(per_matrix.sum()) == prune_count(scores.numel(), fraction)
    per_row = lowest_mask(scores, fraction, per_row=True)
    assert (per_row.sum(1) == prune_count(53, fraction)).all()
    # the pruned entries are the smallest ones: every pruned score <= every kept score in the row
    if 0 < fraction:
        masked_max = torch.where(per_row, scores, torch.tensor(-float("inf"))).max(1).values
        kept_min = torch.where(~per_row, scores, torch.tensor(float("inf"))).min(1).values
        assert (masked_max <= kept_min).all()


def test_ties_are_deterministic():
    scores = torch.ones(8, 16)
    assert torch.equal(lowest_mask(scores, 0.5, True), lowest_mask(scores.clone(), 0.5, True))
    assert int(lowest_mask(scores, 0.5, False).sum()) == 64


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4)])
def test_nm_mask_valid_and_keeps_largest(n, m):
    scores = torch.rand(12, 32, generator=torch.Generator().manual_seed(2))
    mask = nm_mask(scores, n, m)
    assert ((~mask).reshape(12, -1, m).sum(-1) == n).all()
    kept = scores.masked_fill(mask, 0)
    assert check_nm(kept, n, m)
    groups = scores.reshape(12, -1, m)
    top = groups.topk(n, dim=-1).values.sum(-1)
    assert torch.allclose(kept.reshape(12, -1, m).sum(-1), top)


def test_check_nm_detects_violation():
    weight = torch.ones(2, 8)
    assert not check_nm(weight, 2, 4)
    weight[:, [0, 1, 4, 5]] = 0
    assert check_nm(weight, 2, 4)
    assert not check_nm(torch.zeros(2, 6), 2, 4)  # width not divisible by M


def test_select_mask_dispatch():
    scores = torch.rand(4, 8)
    assert int(select_mask(scores, SparsityTarget(sparsity=0.25)).sum()) == 8
    assert check_nm(scores.masked_fill(select_mask(scores, SparsityTarget(n=2, m=4)), 0), 2, 4)


@pytest.mark.parametrize("sparsity,pattern,message", [
    (1.0, None, "in [0, 1)"), (-0.1, None, "in [0, 1)"), (None, None, "give a target"),
    (0.5, "2:4", "not both"), (None, "4:2", "0 < N < M"), (None, "0:4", "0 < N < M"), (None, "2-4", "N:M"),
])
def test_bad_targets(sparsity, pattern, message):
    with pytest.raises(ArgumentError, match=re.escape(message)):
        SparsityTarget.parse(sparsity, pattern)


def test_nm_width_not_divisible():
    with pytest.raises(ArgumentError, match="divide"):
        nm_mask(torch.rand(2, 6), 2, 4)
    assert parse_pattern(" 2 : 4 ") == (2, 4)


def test_lowest_mask_breaks_ties_like_a_stable_sort():
    """The O(n) k-th-value selection prunes exactly what a stable sort of the scores would."""
    import torch

    from prunekit.sparsity import lowest_mask, prune_count

    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        scores = torch.randint(0, 4, (6, 10), generator=generator).float()  # many ties
        for fraction in (0.0, 0.3, 0.5, 0.9):
            k = prune_count(10, fraction)
            expected = torch.zeros(6, 10, dtype=torch.bool)
            if k:
                expected.scatter_(1, torch.sort(scores, dim=1, stable=True).indices[:, :k], True)
            assert torch.equal(lowest_mask(scores, fraction, per_row=True), expected)
            k = prune_count(60, fraction)
            flat = torch.zeros(60, dtype=torch.bool)
            if k:
                flat[torch.sort(scores.reshape(-1), stable=True).indices[:k]] = True
            assert torch.equal(lowest_mask(scores, fraction, per_row=False), flat.view(6, 10))
