"""Nearest-neighbour search: faiss IndexFlatL2 vs anomalib's PatchCore path (chunked matmul), and faiss IVF.

    python benchmarks/knn.py --bank 20000 --dim 384 --images 200 --patches 1369 --nprobe 1,8,32

Reports wall time, peak RSS growth, achieved GFLOP/s (2*N*M*d / t) and this machine's matmul peak
(a large float32 torch.mm) for scale; checks both exact paths agree on the distances (max abs difference).
The approximate `knn: faiss_ivf` path (`hdmap.models.knn.ivf_index`) is timed per nprobe with its recall@1
against the exact search (the share of queries whose nearest-neighbour distance it finds exactly).
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time

import numpy as np
import psutil
import torch


def peak_rss_during(fn):
    proc, peak, done = psutil.Process(), [0], threading.Event()
    base = proc.memory_info().rss

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.01)

    t = threading.Thread(target=sample)
    t.start()
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    done.set()
    t.join()
    return out, seconds, (max(peak[0], proc.memory_info().rss) - base) / 2**20


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bank", type=int, default=20000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--patches", type=int, default=1369)
    p.add_argument("--nprobe", default="1,8,32", help="IVF cells searched per query, comma-separated ('' = skip IVF)")
    p.add_argument(
        "--data",
        default="normal",
        choices=["normal", "clustered"],
        help="random normal rows, or rows drawn around 256 centres (closer to real patch features)",
    )
    return p.parse_args()


def _bank_and_queries(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    """Seeded float32 rows; `clustered` draws them around 256 shared centres, as real patch features cluster."""
    rng = np.random.default_rng(0)
    bank = rng.standard_normal((args.bank, args.dim), dtype=np.float32)
    queries = rng.standard_normal((args.images * args.patches, args.dim), dtype=np.float32)
    if args.data == "clustered":
        centres = rng.standard_normal((256, args.dim), dtype=np.float32) * 3
        bank = 0.5 * bank + centres[rng.integers(0, 256, len(bank))]
        queries = 0.5 * queries + centres[rng.integers(0, 256, len(queries))]
    return bank, queries


def _matmul_peak_gflops() -> float:
    """This machine's float32 matmul rate: the scale the searches' GFLOP/s are read against."""
    a = torch.randn(4096, 4096)
    torch.mm(a, a)
    t0 = time.perf_counter()
    for _ in range(3):
        torch.mm(a, a)
    return 3 * 2 * 4096**3 / (time.perf_counter() - t0) / 1e9


def _ivf_runs(bank: np.ndarray, queries: np.ndarray, nprobes: list[int], exact: tuple, flat_s: float) -> dict:
    """Per nprobe: the IVF index's build and search time and its recall@1 against the exact search `exact`."""
    import faiss

    from hdmap.models.knn import ivf_index

    d_exact, i_exact = exact
    ivf = {}
    for nprobe in nprobes:
        t0 = time.perf_counter()
        index = ivf_index(bank, nprobe)
        t_build = time.perf_counter() - t0
        (d_ivf, i_ivf), t_ivf, m_ivf = peak_rss_during(lambda index=index: index.search(queries, 1))
        d_ivf = np.sqrt(np.maximum(d_ivf[:, 0], 0))
        # a hit: the exact nearest row, or one at the same distance up to float32 rounding (a tie)
        hit = (i_ivf[:, 0] == i_exact) | (np.abs(d_ivf - d_exact) <= 1e-5 * np.maximum(d_exact, 1.0))
        ivf[f"nprobe={nprobe}"] = {
            "nlist": faiss.extract_index_ivf(index).nlist,
            "build_s": round(t_build, 2),
            "search_s": round(t_ivf, 2),
            "speedup_vs_flat": round(flat_s / t_ivf, 1),
            "recall_at_1": round(float(np.mean(hit)), 4),
            "peak_rss_mb": round(m_ivf),
        }
    return ivf


def main() -> None:
    args = _args()

    import faiss
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    bank, queries = _bank_and_queries(args)
    flops = 2.0 * bank.shape[0] * queries.shape[0] * args.dim
    peak_gflops = _matmul_peak_gflops()

    def run_faiss():
        index = faiss.IndexFlatL2(args.dim)
        index.add(bank)
        d, i = index.search(queries, 1)
        return np.sqrt(np.maximum(d[:, 0], 0)), i[:, 0]

    def run_anomalib():
        model = PatchcoreModel(layers=["layer2"], backbone="resnet18", pre_trained=False)
        model.memory_bank = torch.from_numpy(bank)
        with torch.no_grad():
            d, _ = model.nearest_neighbors(torch.from_numpy(queries), n_neighbors=1)
        return d.numpy().reshape(-1)

    (d_faiss, i_faiss), t_faiss, m_faiss = peak_rss_during(run_faiss)
    d_anom, t_anom, m_anom = peak_rss_during(run_anomalib)
    nprobes = [int(v) for v in args.nprobe.split(",") if v]
    ivf = _ivf_runs(bank, queries, nprobes, (d_faiss, i_faiss), t_faiss)
    print(
        json.dumps(
            {
                "data": args.data,
                "bank": list(bank.shape),
                "queries": list(queries.shape),
                "threads": torch.get_num_threads(),
                "cores": os.cpu_count(),
                "machine_matmul_peak_gflops": round(peak_gflops, 1),
                "faiss_s": round(t_faiss, 2),
                "faiss_gflops": round(flops / t_faiss / 1e9, 1),
                "faiss_peak_rss_mb": round(m_faiss),
                "anomalib_s": round(t_anom, 2),
                "anomalib_gflops": round(flops / t_anom / 1e9, 1),
                "anomalib_peak_rss_mb": round(m_anom),
                "speedup": round(t_anom / t_faiss, 2),
                "max_abs_distance_diff": float(np.abs(d_faiss - d_anom).max()),
                "faiss_ivf": ivf,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
