"""Nearest neighbours of query patches in a memory bank: faiss (exact flat or IVF) or dense torch.

Every path returns Euclidean distances (sqrt of L2) and bank indices, sorted nearest first, so an image
score is the same whichever exact path runs (tested within 1e-4). `faiss_ivf` is approximate: it searches
`nprobe` of `nlist` k-means cells; `benchmarks/knn.py` reports its recall against the exact search.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from hdmap.models.configs.patchcore_family import KNN_METHODS

TORCH_CHUNK = 4096  # query rows per torch.cdist call: bounds the (chunk x bank) distance matrix


def knn_search(
    queries: torch.Tensor, bank: torch.Tensor, k: int = 1, method: str = "faiss", nprobe: int = 8, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D) queries, (M, D) bank -> distances (N, k) and bank indices (N, k), on the queries' device."""
    if bank.shape[0] == 0:
        raise ValueError("memory bank is empty")
    k = min(k, bank.shape[0])
    if method == "torch":
        return _dense(queries, bank, k)
    if method not in KNN_METHODS:
        raise ValueError(f"unknown kNN method {method!r}; use one of {', '.join(KNN_METHODS)}")
    import faiss

    faiss.omp_set_num_threads(max(1, torch.get_num_threads()))  # respect the trial's CPU share
    xb = np.ascontiguousarray(bank.detach().float().cpu().numpy())
    xq = np.ascontiguousarray(queries.detach().float().cpu().numpy())
    if method == "faiss_ivf":
        index = ivf_index(xb, nprobe, seed)
    else:
        index = faiss.IndexFlatL2(xb.shape[1])  # exact; both return squared L2
        index.add(xb)
    squared, ids = index.search(xq, k)
    distances = torch.from_numpy(np.sqrt(np.maximum(squared, 0.0)))
    return distances.to(queries.device), torch.from_numpy(ids).to(queries.device)


def ivf_index(xb: np.ndarray, nprobe: int, seed: int = 0):
    """faiss IVF-flat over the bank: nlist ~ sqrt(M) cells (at least 39 training points each), `nprobe` searched."""
    import faiss

    nlist = max(1, min(int(math.sqrt(xb.shape[0])), xb.shape[0] // 39))
    index = faiss.index_factory(xb.shape[1], f"IVF{nlist},Flat")  # owns its coarse quantizer
    ivf = faiss.extract_index_ivf(index)
    ivf.cp.seed = seed
    index.train(xb)
    index.add(xb)
    ivf.nprobe = min(nprobe, nlist)
    return index


def _dense(queries: torch.Tensor, bank: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    bank = bank.float().to(queries.device)
    parts = [torch.cdist(chunk.float(), bank).topk(k, dim=1, largest=False) for chunk in queries.split(TORCH_CHUNK)]
    return torch.cat([p.values for p in parts]), torch.cat([p.indices for p in parts])
