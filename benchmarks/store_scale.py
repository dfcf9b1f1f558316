"""Results store at simulated scale (no trials run): compaction, full read and resume look-up at N trials.

    python benchmarks/store_scale.py --n 10000 --new 100 --where local,s3

Writes N synthetic trials' parts (one realistic results row on the full results schema, and --score-rows score
rows each) through the store's own part writer, compacting after every --batch trials as the driver's background
pass would, to a local folder and/or a moto S3 server on loopback (the test dependency). Then --new more trials
arrive and it times: one compaction pass (target: < 2 s local, < 10 s local S3), reading the whole results
table (`ResultStore.results`), and resume's look-up of finished trials (`ResultStore.status_by_trial`, with
the new parts compacted and with one uncompacted part). Prints one JSON line per location.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa


def templates(score_rows: int) -> tuple[pa.Table, pa.Table]:
    """One realistic trial: an ok row of a PatchCore trial on the full schema, and its per-image scores."""
    from hdmap.config import load_trial_config
    from hdmap.metrics import METRIC_KEYS
    from hdmap.results import SCORE_SCHEMA, flatten_config, results_schema, to_table

    cfg = load_trial_config(None, [])
    rng = np.random.default_rng(0)
    row = {
        **flatten_config(cfg.model_dump(mode="json")),
        "trial_id": "t",
        "sweep": "scale",
        "spec_hash": "h",
        "attempts": 1,
        "status": "ok",
        "model": cfg.model.name,
        "train_domain": "domain_C",
        "test_domain": "domain_C",
        "seed": 0,
        "n_fit": 1000,
        "fit_s": 61.5,
        "predict_s": 12.25,
        "total_s": 80.0,
        "peak_rss_mb": 3100.0,
        "device": "cuda",
        "host": "node-17",
        "git_sha": "0" * 40,
        "versions": json.dumps({"torch": "2.6", "anomalib": "2.7"}),
        "config_json": cfg.model_dump_json(),
    }
    row.update({k: float(rng.random()) if not k.startswith("n_") else 1000 for k in METRIC_KEYS})
    results = to_table([row], results_schema())
    n = score_rows
    scores = pa.table(
        {
            "trial_id": ["t"] * n,
            "sweep": ["scale"] * n,
            "test_domain": ["domain_C"] * n,
            "file": [f"domain_C/test/{'good' if i % 2 else 'fault'}/image_{i:05d}.tiff" for i in range(n)],
            "label": pa.array(np.arange(n) % 2, pa.int8()),
            "condition": ["cold" if i < n // 2 else "warm" for i in range(n)],
            "score": rng.random(n),
            "gate": [None] * n,
            "severity_pred": [None] * n,
            "severity_true": [None] * n,
        },
        schema=SCORE_SCHEMA,
    )
    return results, scores


def write_parts(store, ids: list[str], results: pa.Table, scores: pa.Table, threads: int) -> None:
    """Each trial's two parts, written as trials write them (`ResultStore.write_parts`), `threads` at a time."""

    def one(trial_id: str) -> None:
        ids_r = pa.array([trial_id] * results.num_rows, pa.string())
        ids_s = pa.array([trial_id] * scores.num_rows, pa.string())
        store.write_parts(trial_id, results.set_column(0, "trial_id", ids_r), scores.set_column(0, "trial_id", ids_s))

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, ids))


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def measure(uri: str, args, results: pa.Table, scores: pa.Table) -> dict:
    from sweeps.store import CHUNK_TRIALS, ResultStore

    store = ResultStore(uri)
    ids = [f"trial-{i:06d}" for i in range(args.n + args.new + 1)]
    t_write = t_batch_compact = 0.0
    batch_passes = []
    t_start = time.perf_counter()
    for lo in range(0, args.n, args.batch):
        hi = min(lo + args.batch, args.n)
        t_write += timed(lambda lo=lo, hi=hi: write_parts(store, ids[lo:hi], results, scores, args.threads))[0]
        seconds = timed(store.compact)[0]
        t_batch_compact += seconds
        batch_passes.append(round(seconds, 2))
        if time.perf_counter() - t_start > args.time_box:
            ids_written = hi
            break
    else:
        ids_written = args.n
    new = ids[ids_written : ids_written + args.new]
    write_parts(store, new, results, scores, args.threads)
    pass_s, changed = timed(store.compact)
    assert changed
    read_s, table = timed(store.results)
    assert table.num_rows == ids_written + args.new, table.num_rows
    resume_s, status = timed(store.status_by_trial)
    assert len(status) == ids_written + args.new
    write_parts(store, [ids[ids_written + args.new]], results, scores, args.threads)  # one the driver has not seen
    resume_pending_s, status = timed(store.status_by_trial)
    assert len(status) == ids_written + args.new + 1
    return {
        "where": uri.split("?")[0],
        "trials": ids_written,
        "new": args.new,
        "score_rows": args.score_rows,
        "chunk_trials": CHUNK_TRIALS,
        "write_parts_s": round(t_write, 1),
        "background_passes_s": f"{len(batch_passes)} passes of {args.batch}: first {batch_passes[0]}, "
        f"last {batch_passes[-1]}, total {t_batch_compact:.1f}",
        "pass_after_new_s": round(pass_s, 3),
        "read_results_s": round(read_s, 3),
        "resume_lookup_s": round(resume_s, 3),
        "resume_lookup_one_uncompacted_s": round(resume_pending_s, 3),
    }


class MotoS3:
    """A moto S3 server on loopback with one bucket, as in tests/test_store_s3.py."""

    def __enter__(self) -> str:
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
        os.environ.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1")
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
        self.server.start()
        host, port = self.server.get_host_and_port()
        import boto3

        boto3.client("s3", endpoint_url=f"http://{host}:{port}").create_bucket(Bucket="bench")
        return f"s3://bench/scale?endpoint_override={host}:{port}&scheme=http&region=us-east-1"

    def __exit__(self, *exc) -> None:
        self.server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="trials already in the store")
    parser.add_argument("--new", type=int, default=100, help="trials arriving before the measured pass")
    parser.add_argument("--score-rows", type=int, default=2_000, help="score rows per trial")
    parser.add_argument("--batch", type=int, default=500, help="trials per background pass while filling")
    parser.add_argument("--threads", type=int, default=8, help="parts written at once (trials writing in parallel)")
    parser.add_argument("--where", default="local,s3", help="local, s3 or both")
    parser.add_argument("--time-box", type=float, default=1800, help="stop filling after this many seconds")
    args = parser.parse_args()
    results, scores = templates(args.score_rows)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}"
    for where in args.where.split(","):
        if where == "local":
            with tempfile.TemporaryDirectory(prefix="hdmap-store-scale-") as tmp:
                print(json.dumps({**measure(f"{tmp}/scale", args, results, scores), "machine": machine}), flush=True)
        else:
            with MotoS3() as uri:
                print(json.dumps({**measure(uri, args, results, scores), "machine": machine}), flush=True)


if __name__ == "__main__":
    main()
