"""Dinomaly / sev_dinomaly: seconds per training step and per scored image, at a given encoder, input size and batch.

    python benchmarks/dinomaly_step.py --model dinomaly --encoder vit_small_patch14_reg4_dinov2 \
        --size 56,168 --crop 42,154 --batch 8 --steps 5
    python benchmarks/dinomaly_step.py --size 448,448 --crop 392,392 --batch 16 --steps 1     # the real size

A training step is what Lightning runs per batch: the transform, the forward pass, the loss (with the variants the
config sets), backward, gradient clipping and the StableAdamW + schedule step. Random init (`pretrained: false`):
the time does not depend on the weights. The first step is run and reported apart (allocator warm-up); `--steps`
more are averaged. Prints one JSON line; also the machine's load average, since shared CPUs change the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="dinomaly", choices=["dinomaly", "sev_dinomaly"])
    p.add_argument("--encoder", default="vit_small_patch14_reg4_dinov2")
    p.add_argument("--size", default="448,448", help="resize target H,W")
    p.add_argument("--crop", default="392,392", help="centre crop H,W ('' = none)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=1, help="timed steps after the first (0: only the first)")
    p.add_argument("--set", action="append", default=[], help="extra model.FIELD=VALUE, e.g. topk_q=0.02")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, = cores)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from hdmap.config import load_trial_config
    from hdmap.data.transforms import HdmapTransform
    from hdmap.models.registry import MODELS

    overrides = [
        f"model.name={args.model}",
        f"model.encoder={args.encoder}",
        "model.pretrained=false",
        f"model.batch_size={args.batch}",
        f"data.image_size=[{args.size}]",
        *([f"data.center_crop=[{args.crop}]"] if args.crop else []),
        *(f"model.{s}" for s in args.set),
    ]
    cfg = load_trial_config(None, overrides)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    module = MODELS[cfg.model.name].build(cfg.model, HdmapTransform.for_data(cfg.data), cfg.seed)
    build_s = time.perf_counter() - t0
    optimizers = module.configure_optimizers()
    optimizer, schedule = optimizers["optimizer"], optimizers["lr_scheduler"]["scheduler"]
    module.log = lambda *a, **k: None  # no trainer here: logging is Lightning's, not part of the step
    module.train()

    def step(i: int) -> float:
        raw = torch.rand(args.batch, 31, 95, generator=torch.Generator().manual_seed(i))
        batch = module.on_after_batch_transfer({"raw": raw, "index": torch.arange(args.batch)}, 0)
        start = time.perf_counter()
        if i == 0:  # sev_dinomaly draws its faults from the seeded generator set at fit start
            module.on_fit_start()
        loss = module.training_step(batch, i)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_([q for g in optimizer.param_groups for q in g["params"]], 0.1)
        optimizer.step()
        schedule.step()
        return time.perf_counter() - start

    first = step(0)
    timed = [step(i + 1) for i in range(args.steps)]
    module.eval()
    raw = torch.rand(args.batch, 31, 95)
    with torch.no_grad():
        start = time.perf_counter()
        module.predict_step(module.on_after_batch_transfer({"raw": raw}, 0), 0)
        predict_s = time.perf_counter() - start
    print(
        json.dumps(
            {
                "model": args.model,
                "encoder": args.encoder,
                "input": list(cfg.data.model_input_size),
                "batch": args.batch,
                "build_s": round(build_s, 2),
                "first_step_s": round(first, 3),
                "step_s": round(sum(timed) / len(timed), 3) if timed else None,
                "steps_timed": len(timed),
                "predict_s_per_image": round(predict_s / args.batch, 4),
                "torch_threads": torch.get_num_threads(),
                "loadavg_1m": round(os.getloadavg()[0], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
