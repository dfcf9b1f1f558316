"""WinCLIP cost per image at 240 x 240 on ViT-B-16-plus-240, and a full domain's trial extrapolated from it.

    python benchmarks/winclip.py --batches 2 --batch 8

Random init (`pretrained: false`): the cost does not depend on the weights. Times, on one process with torch's
default threads: building the model (`hdmap.models.winclip.build`), the prompt ensemble's text embeddings (once per
trial, memoised by the feature cache in sweeps), the zero-shot path (one CLIP pass per image) and the few-shot path
(the image pass plus one transformer pass per sliding window: 196 + 169 windows at scales 2, 3), and scoring a
batch against k reference embeddings. The extrapolation is for one trial on a real domain (1,000 train images:
100 validation normals scored for the threshold, 1,000 + 1,000 test images), without cache hits.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch


def timed(fn, repeat: int = 1) -> float:
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t0) / repeat


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clip-model", default="ViT-B-16-plus-240")
    p.add_argument("--size", type=int, default=240)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--batches", type=int, default=2, help="batches timed per path")
    p.add_argument("--k-shot", type=int, default=2, help="references scored against (few-shot)")
    p.add_argument("--scored", type=int, default=2100, help="images one trial scores (extrapolation)")
    args = p.parse_args()

    from hdmap.data.transforms import HdmapTransform
    from hdmap.models.configs.winclip import WinClipConfig
    from hdmap.models.winclip import REFERENCES, build

    torch.manual_seed(0)
    cfg = WinClipConfig(clip_model=args.clip_model, pretrained=False)
    transform = HdmapTransform((args.size, args.size), "nearest", normalization="clip")
    module = None

    def make():
        nonlocal module
        module = build(cfg, transform).eval()

    out = {"clip_model": args.clip_model, "size": args.size, "threads": torch.get_num_threads()}
    out["load_avg_1min_before"] = os.getloadavg()[0]
    out["build_s"] = timed(make)
    out["text_s"] = timed(module._text_embeddings)
    images = torch.randn(args.batch, 3, args.size, args.size)
    per = args.batch * args.batches
    out["zero_shot_s_per_image"] = (
        timed(lambda: module._encode(images, few_shot=False), args.batches) * args.batches / per
    )
    out["few_shot_s_per_image"] = (
        timed(lambda: module._encode(images, few_shot=True), args.batches) * args.batches / per
    )
    module.banks = {REFERENCES: module._encode(images[: args.k_shot], few_shot=True)}
    emb = module._encode(images, few_shot=True)
    zero = module._zero_shot(emb)
    out["few_shot_scoring_s_per_image"] = timed(lambda: module._combined(zero, emb, REFERENCES), 3) / args.batch
    fixed = out["build_s"] + out["text_s"]
    out["trial_zero_shot_s"] = fixed + args.scored * out["zero_shot_s_per_image"]
    out["trial_few_shot_s"] = fixed + (args.scored + args.k_shot) * (
        out["few_shot_s_per_image"] + out["few_shot_scoring_s_per_image"]
    )
    out["load_avg_1min_after"] = os.getloadavg()[0]
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}, indent=1))


if __name__ == "__main__":
    main()
