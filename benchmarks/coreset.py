"""Coreset subsampling: our k-center greedy vs anomalib's KCenterGreedy.

    python benchmarks/coreset.py --n 100000 --dim 384 --ratios 0.01 0.1

Reports time, peak RSS growth, and the coverage radius of the selected set (max over all points of the
distance to the nearest selected point: lower is a better cover), so speed is not bought with quality.
"""

from __future__ import annotations

import argparse
import json

import torch

from benchmarks.knn import peak_rss_during


def coverage_radius(x: torch.Tensor, chosen: torch.Tensor) -> float:
    centers = x[chosen]
    radius = 0.0
    for chunk in x.split(8192):
        radius = max(radius, float(torch.cdist(chunk, centers).min(dim=1).values.max()))
    return radius


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--ratios", type=float, nargs="+", default=[0.01, 0.1])
    p.add_argument("--skip-anomalib", action="store_true")
    args = p.parse_args()

    from anomalib.models.components import KCenterGreedy

    from hdmap.models.coreset import k_center_greedy

    x = torch.randn(args.n, args.dim, generator=torch.Generator().manual_seed(0))
    rows = []
    for ratio in args.ratios:
        keep = int(args.n * ratio)
        ours, t_ours, m_ours = peak_rss_during(lambda keep=keep: k_center_greedy(x, keep, seed=0))
        row = {
            "n": args.n,
            "dim": args.dim,
            "ratio": ratio,
            "ours_s": round(t_ours, 2),
            "ours_peak_rss_mb": round(m_ours),
            "ours_radius": round(coverage_radius(x, ours), 4),
        }
        if not args.skip_anomalib:
            torch.manual_seed(0)
            theirs, t_theirs, m_theirs = peak_rss_during(
                lambda ratio=ratio: torch.tensor(KCenterGreedy(embedding=x, sampling_ratio=ratio).select_coreset_idxs())
            )
            row.update(
                anomalib_s=round(t_theirs, 2),
                anomalib_peak_rss_mb=round(m_theirs),
                anomalib_radius=round(coverage_radius(x, theirs), 4),
                speedup=round(t_theirs / t_ours, 2),
            )
        rows.append(row)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
