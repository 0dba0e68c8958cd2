"""Stability and ground-truth metrics on hand-made cases, and Kendall's tau against scipy."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from course_lib.metrics import csi, kendall_tau, mask_precision_at_k, mean_pairwise, top_k, topk_jaccard, vsi


def test_top_k_by_abs_and_signed():
    a = torch.tensor([0.1, -3.0, 2.0, 0.5])
    assert top_k(a, 2) == {1, 2}
    assert top_k(a, 2, by_abs=False) == {2, 3}
    assert top_k(torch.tensor([1.0, 1.0, 1.0]), 2) == {0, 1}, "ties go to the lower index"
    with pytest.raises(ValueError):
        top_k(a, 0)
    with pytest.raises(ValueError):
        top_k(a, 5)


def test_topk_jaccard_hand_cases():
    a = torch.tensor([5.0, 4.0, 3.0, 0.0, 0.0])
    assert topk_jaccard(a, a, 3) == 1.0
    b = torch.tensor([5.0, 4.0, 0.0, 3.0, 0.0])  # top-3 {0,1,3} vs {0,1,2}: 2 shared of 4
    assert topk_jaccard(a, b, 3) == pytest.approx(2 / 4)
    c = torch.tensor([0.0, 0.0, 0.0, 1.0, 2.0])
    assert topk_jaccard(a, c, 2) == 0.0
    assert topk_jaccard(a, -a, 3) == 1.0, "by |value| a sign flip keeps the set"


def test_kendall_tau_hand_cases_and_scipy():
    from scipy.stats import kendalltau

    a = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert kendall_tau(a, a) == pytest.approx(1.0)
    assert kendall_tau(a, -a) == pytest.approx(-1.0)
    assert kendall_tau(a, torch.tensor([1.0, 2.0, 4.0, 3.0])) == pytest.approx(4 / 6)  # 5 concordant, 1 discordant
    rng = np.random.default_rng(0)
    for _ in range(5):
        x, y = rng.integers(0, 4, 12).astype(float), rng.normal(size=12)  # with ties in x
        assert kendall_tau(torch.tensor(x), torch.tensor(y)) == pytest.approx(kendalltau(x, y).statistic, abs=1e-12)
    assert np.isnan(kendall_tau(torch.ones(3), a[:3]))


def test_mean_pairwise():
    runs = torch.tensor([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0], [1.0, 2.0, 3.0]])
    # pairs (0,1): 1, (0,2): -1, (1,2): -1 -> mean -1/3
    assert mean_pairwise(runs, kendall_tau) == pytest.approx(-1 / 3)
    with pytest.raises(ValueError):
        mean_pairwise(runs[:1], kendall_tau)


def test_vsi_hand_case():
    runs = torch.tensor(
        [
            [5.0, 4.0, 0.0, 0.0],  # selects {0, 1}
            [5.0, 0.0, 4.0, 0.0],  # selects {0, 2}
            [5.0, 4.0, 0.0, 0.0],  # selects {0, 1}
        ]
    )
    # pairs: {0,1}v{0,2} -> 1/2, {0,1}v{0,1} -> 1, {0,2}v{0,1} -> 1/2 ; mean 2/3
    assert vsi(runs, 2) == pytest.approx(100 * 2 / 3)
    assert vsi(runs[[0, 2]], 2) == pytest.approx(100.0)


def test_csi_hand_case():
    runs = torch.tensor([[1.0, 0.0], [1.1, 5.0], [0.9, 0.2]])
    se = torch.full_like(runs, 0.1)  # intervals +-0.196
    # feature 0: all pairs overlap (3/3); feature 1: only (0, 2) overlaps (1/3)
    assert csi(runs, se) == pytest.approx(100 * (3 + 1) / 6)
    assert csi(runs, torch.zeros_like(runs), z=1.96) == pytest.approx(0.0), "zero-width distinct intervals never overlap"


def test_mask_precision_at_k():
    seg = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]])
    obj = torch.zeros(4, 4, dtype=torch.bool)
    obj[:2, :2] = True  # segment 0 fully on the object
    obj[2, 2:] = True  # segment 3 half on: not "mostly"
    attr = torch.tensor([1.0, 0.5, -2.0, 0.8])
    assert mask_precision_at_k(attr, seg, obj, 1) == 1.0
    assert mask_precision_at_k(attr, seg, obj, 2) == 0.5
    assert mask_precision_at_k(attr, seg, obj, 1, by_abs=True) == 0.0
