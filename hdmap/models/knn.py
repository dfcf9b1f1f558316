"""Exact nearest-neighbour distance of query patches to a memory bank: faiss flat index or dense torch.

Both return the Euclidean distance (sqrt of L2) of every query row to its nearest bank row, so the
image score (max over an image's patches) is the same whichever path runs (tested within 1e-4).
"""

from __future__ import annotations

import numpy as np
import torch

TORCH_CHUNK = 4096  # query rows per torch.cdist call: bounds the (chunk x bank) distance matrix


def nn_distance(queries: torch.Tensor, bank: torch.Tensor, method: str = "faiss") -> torch.Tensor:
    """(N, D) queries, (M, D) bank -> (N,) distance to the nearest bank row, on the queries' device."""
    if bank.shape[0] == 0:
        raise ValueError("memory bank is empty")
    if method == "faiss":
        return _faiss(queries, bank)
    if method == "torch":
        return _dense(queries, bank)
    raise ValueError(f"unknown kNN method {method!r}; use 'faiss' or 'torch'")


def _faiss(queries: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    import faiss

    faiss.omp_set_num_threads(max(1, torch.get_num_threads()))  # respect the trial's CPU share
    xb = np.ascontiguousarray(bank.detach().float().cpu().numpy())
    xq = np.ascontiguousarray(queries.detach().float().cpu().numpy())
    index = faiss.IndexFlatL2(xb.shape[1])  # exact search; returns squared L2
    index.add(xb)
    squared, _ = index.search(xq, 1)
    return torch.from_numpy(np.sqrt(np.maximum(squared[:, 0], 0.0))).to(queries.device)


def _dense(queries: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    bank = bank.float().to(queries.device)
    parts = [torch.cdist(chunk.float(), bank).min(dim=1).values for chunk in queries.split(TORCH_CHUNK)]
    return torch.cat(parts)
