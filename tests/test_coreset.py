"""The k-center greedy coreset: exact farthest-first, seeded, and as good a cover as anomalib's."""

import numpy as np
import torch

from hdmap.models.coreset import k_center_greedy


def coverage_radius(x: torch.Tensor, chosen: torch.Tensor) -> float:
    return float(torch.cdist(x, x[chosen]).min(dim=1).values.max())


def test_farthest_first_matches_a_naive_implementation():
    x = torch.randn(300, 8, generator=torch.Generator().manual_seed(0))
    chosen = k_center_greedy(x, 20, seed=3, project_dim=None).tolist()
    naive = [chosen[0]]  # same random start, then the textbook loop
    data = x.numpy().astype(np.float64)
    for _ in range(19):
        d = np.min(((data[:, None, :] - data[naive][None]) ** 2).sum(-1), axis=1)
        naive.append(int(np.argmax(d)))
    assert chosen == naive and len(set(chosen)) == 20


def test_seeded_and_valid():
    x = torch.randn(500, 256, generator=torch.Generator().manual_seed(1))
    a, b = k_center_greedy(x, 50, seed=7), k_center_greedy(x, 50, seed=7)
    assert torch.equal(a, b) and len(set(a.tolist())) == 50
    assert not torch.equal(a, k_center_greedy(x, 50, seed=8))


def test_cover_as_good_as_anomalib():
    from anomalib.models.components import KCenterGreedy

    x = torch.randn(2000, 384, generator=torch.Generator().manual_seed(2))
    ours = coverage_radius(x, k_center_greedy(x, 100, seed=0))
    torch.manual_seed(0)
    theirs_idx = torch.tensor(KCenterGreedy(embedding=x, sampling_ratio=0.05).select_coreset_idxs())
    theirs = coverage_radius(x, theirs_idx)
    assert ours <= 1.05 * theirs, (ours, theirs)
