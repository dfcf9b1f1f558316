"""The bad-input corpus: every mistake a user can make gets one clear error, before anything is fitted.

Each case runs a real command line (in-process, through the typer app) on a small data root or results folder,
and asserts: the exit code; that the message names the culprit (file, field or value); that no Python traceback
reaches the user; that nothing was fitted when the mistake was detectable before; and that no existing result
file changed. Cases that fit first (a memory bank smaller than k is only known once it is built) say so.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import lightning.pytorch as lp
import numpy as np
import pyarrow.parquet as pq
import pytest
import tifffile
from typer.testing import CliRunner

from hdmap.config import load_trial_config
from hdmap.data.arrays import clear_cache
from hdmap.data.simulate import simulate
from hdmap.trial import TrialResult, failed_trial, stamp_data, write_outputs
from sweeps.cli import app
from sweeps.lease import LEASE_FILE
from sweeps.preflight import check_data
from sweeps.spec import load_spec
from sweeps.store import ResultStore
from tests.test_lease import held_by

pytestmark = pytest.mark.usefixtures("fresh_arrays")

TINY = ["model.backbone=resnet18", "model.pretrained=false", "data.image_size=[32,96]", "model.coreset_ratio=0.5"]
KEY_ID, SECRET = "AKIDCORPUS", "S3CR3TCORPUS"  # credentials in a storage URI: never printed nor written
TINY_CLIP = ["model.name=winclip", "model.clip_model=hdmap-tiny-clip", "model.pretrained=false"]
DINO = ["model.name=dinomaly", "model.encoder=vit_small_patch14_reg4_dinov2", "data.image_size=[28,84]"]


@pytest.fixture(scope="module")
def base_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus") / "data"
    simulate(root, n_train=12, n_test=8, domains=["A", "C"], seed=0)
    return root


@pytest.fixture(scope="module")
def trial_out(tmp_path_factory, base_data):
    """One real, successful `hdmap trial` output (results.parquet + scores.parquet), for the output and report cases."""
    out = tmp_path_factory.mktemp("trial") / "ok"
    result = CliRunner().invoke(
        app, ["trial", "--out", str(out), "--set", f"data.root={base_data}", *sum((["--set", s] for s in TINY), [])]
    )
    assert result.exit_code == 0, result.output
    return out


@dataclass
class Ctx:
    tmp: Path
    data: Path  # a private copy of the simulated root, free to break
    trial_out: Path | None = None
    guarded: list[Path] = field(default_factory=list)  # result files that must not change


def tiff(path: Path, array: np.ndarray) -> None:
    tifffile.imwrite(path, array)


def image(value: float = 0.3, shape=(31, 95), dtype=np.float32) -> np.ndarray:
    return np.full(shape, value, dtype)


def sets(*items: str) -> list[str]:
    return sum((["--set", s] for s in items), [])


def trial_args(c: Ctx, *items: str) -> list[str]:
    return ["trial", "--out", str(c.tmp / "out"), *sets(f"data.root={c.data}", *TINY, *items)]


def spec(c: Ctx, body: str = "", **fields) -> str:
    """A small valid sweep spec file on the case's data, with top-level fields replaced or added."""
    tree = {
        "name": "corpus",
        "data": {"root": str(c.data)},
        "output": str(c.tmp / "sweeps"),
        "trial": {
            "model": {"name": "patchcore", "backbone": "resnet18", "pretrained": False, "layers": ["layer2", "layer3"]},
            "data": {"image_size": [32, 96]},
        },
        "axes": {"model.k": [1, 3]},
        **fields,
    }
    path = c.tmp / "spec.yaml"
    import yaml

    path.write_text(yaml.safe_dump(tree) + body)
    return str(path)


def plan_model(c: Ctx, model: dict, data: dict | None = None, axes: dict | None = None) -> list[str]:
    """`sweep plan` of one model's trials on the case's data: a mistake found here is found before Ray starts."""
    return ["sweep", "plan", spec(c, trial={"model": model, "data": data or {}}, axes=axes or {})]


def copy_sweep_without_parts(c: Ctx) -> Path:
    """Sweep results copied to a laptop: results.parquet + scores.parquet + sweep.json, no parts/."""
    folder = c.tmp / "copied"
    folder.mkdir()
    for name in ("results.parquet", "scores.parquet"):
        shutil.copy(c.trial_out / name, folder / name)
    (folder / "sweep.json").write_text(json.dumps({"name": "copied", "n_trials": 1}))
    c.guarded += [folder / "results.parquet", folder / "scores.parquet"]
    return folder


def copy_sweep_with_parts(c: Ctx) -> Path:
    """A finished sweep's whole folder (parts, chunks, manifest, results.parquet) copied with `cp -r`: every file
    has a new mtime, so the parts no longer match the manifest's stamps."""
    source = c.tmp / "finished"
    trial_id = pq.read_table(c.trial_out / "results.parquet")["trial_id"][0].as_py()
    for kind in ("results", "scores"):
        (source / "parts" / kind).mkdir(parents=True)
        shutil.copy(c.trial_out / f"{kind}.parquet", source / "parts" / kind / f"{trial_id}.parquet")
    store = ResultStore(str(source))
    assert store.compact() and store.export()
    (source / "sweep.json").write_text(json.dumps({"name": "finished", "n_trials": 1}))
    folder = c.tmp / "copied-whole"
    time.sleep(0.01)
    shutil.copytree(source, folder, copy_function=shutil.copy)  # shutil.copy, like cp -r: new mtimes
    c.guarded += [p for p in folder.rglob("*") if p.is_file()]
    return folder


def guard_trial_out(c: Ctx) -> Path:
    folder = c.tmp / "trial"
    shutil.copytree(c.trial_out, folder)
    c.guarded += [folder / "results.parquet", folder / "scores.parquet"]
    return folder


@dataclass
class Case:
    argv: Callable[[Ctx], list[str]]
    code: int
    names: str | Callable[[Ctx], str]  # a text the message must contain (the culprit)
    setup: Callable[[Ctx], None] | None = None
    fits: bool = False  # True: only detectable once a model is built (then fitting is allowed)
    absent: tuple[str, ...] = ()  # texts (credentials) found nowhere: output, exception, files the command wrote


def _set(path: str, value) -> Callable[[Ctx], None]:
    def setup(c: Ctx) -> None:
        target = c.data / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if callable(value):
            value(target)
        elif isinstance(value, np.ndarray):
            tiff(target, value)
        else:
            target.write_text(value)

    return setup


def _renumber(start: int, folder="domain_C/test/good") -> Callable[[Ctx], None]:
    def setup(c: Ctx) -> None:
        files = sorted((c.data / folder).glob("*.tiff"))
        for i, f in enumerate(reversed(files)):
            f.rename(f.with_name(f"{start + len(files) - 1 - i:06d}.tiff"))

    return setup


def _nan(c: Ctx) -> None:
    img = image()
    img[3, 4:44] = np.nan
    tiff(c.data / "domain_C/train/good/000002.tiff", img)


def _out_holds_other_trial(c: Ctx) -> None:
    shutil.copytree(c.trial_out, c.tmp / "out")
    c.guarded += [c.tmp / "out/results.parquet", c.tmp / "out/scores.parquet"]


def _damaged_sweep_json(c: Ctx) -> None:
    (copy_sweep_without_parts(c) / "sweep.json").write_text("{not json")


def _out_ok_then_broken_data(c: Ctx) -> None:
    """The same trial succeeded before in this --out; now its data is broken: the ok result must survive."""
    folder = c.tmp / "out"
    ok = CliRunner().invoke(app, trial_args(c))
    assert ok.exit_code == 0, ok.output
    c.guarded += [folder / "results.parquet", folder / "scores.parquet"]
    bad = c.data / "domain_C/test/fault/000001.tiff"
    was = bad.stat()  # a corruption the data fingerprint cannot see (bit rot: same size and mtime), found by decoding
    bad.write_bytes(b"not a tiff".ljust(was.st_size, b"\0"))
    os.utime(bad, ns=(was.st_atime_ns, was.st_mtime_ns))
    clear_cache()  # a new `hdmap trial` process would decode again


def _finished(cfg) -> TrialResult:
    """A finished trial's result without fitting it: what a stored ok row holds (metrics aside)."""
    result = failed_trial(cfg, RuntimeError("stands in for a finished trial"))
    result.rows[0].update(status="ok", error=None)
    return result


def _out_ok_then_changed_data(c: Ctx, keep_fingerprint: bool = True) -> None:
    """This --out holds the trial's ok result on the data as it was (or, without its fingerprint, as an older hdmap
    wrote it); then a test file is rewritten (same size, new pixels)."""
    cfg = load_trial_config(None, [f"data.root={c.data}", *TINY])
    stamp_data(cfg)
    written = write_outputs(_finished(cfg), c.tmp / "out", cfg)
    if not keep_fingerprint:
        pq.write_table(pq.read_table(written).drop_columns(["data_fingerprint"]), written)
    c.guarded += [written, c.tmp / "out/scores.parquet"]
    tiff(c.data / "domain_C/test/good/000000.tiff", image(0.5))


def _sweep_done_then_data_changed(c: Ctx) -> None:
    """The corpus sweep's store holds one finished trial on the data as it was; then a train file is added."""
    plan = load_spec(spec(c))
    check_data(plan)  # stamps each trial with its data's fingerprint, as the driver does before launch
    ResultStore(str(c.tmp / "sweeps/corpus")).write_trial(_finished(plan.trials[0]), "corpus", plan.spec_hash)
    c.guarded += sorted((c.tmp / "sweeps/corpus/parts").rglob("*.parquet"))
    tiff(c.data / "domain_C/train/good/000012.tiff", image())


def _two_pages(path: Path) -> None:
    tiff(path, image())
    tifffile.imwrite(path, image(0.6), append=True)


def _another_driver(c: Ctx) -> None:
    """A live driver's lease on the corpus sweep (this test process stands in for it)."""
    folder = c.tmp / "sweeps" / "corpus"
    held_by(folder, socket.gethostname(), os.getpid())
    c.guarded.append(folder / LEASE_FILE)


CASES: dict[str, Case] = {
    # ---------------------------------------------------------------- data
    "data: root missing": Case(lambda c: trial_args(c, f"data.root={c.tmp}/nope"), 2, "nope"),
    "data: domain folder missing": Case(lambda c: trial_args(c, "data.domain=B"), 2, "domain_B"),
    "data: unknown domain": Case(lambda c: trial_args(c, "data.domain=E"), 2, "'E'"),
    "data: domain all on a root without every domain": Case(
        lambda c: trial_args(c, "data.domain=all"), 2, "data.domain=all fits one model on every domain"
    ),
    "data: empty split": Case(
        lambda c: trial_args(c),
        2,
        "test/fault",
        lambda c: [p.unlink() for p in (c.data / "domain_C/test/fault").glob("*")],
    ),
    "data: corrupt tiff": Case(
        lambda c: trial_args(c), 2, "000003.tiff", _set("domain_C/test/good/000003.tiff", "garbage")
    ),
    "data: wrong shape": Case(
        lambda c: trial_args(c), 2, "000001.tiff", _set("domain_C/train/good/000001.tiff", image(shape=(32, 95)))
    ),
    "data: wrong dtype": Case(
        lambda c: trial_args(c), 2, "float64", _set("domain_C/train/good/000001.tiff", image(dtype=np.float64))
    ),
    "data: NaN pixels": Case(lambda c: trial_args(c), 2, "000002.tiff", _nan),
    "data: negative pixels": Case(
        lambda c: trial_args(c), 2, "negative", _set("domain_C/test/fault/000000.tiff", image(-0.2))
    ),
    "data: stray non-numeric name": Case(
        lambda c: trial_args(c), 2, "abc.tiff", _set("domain_C/test/good/abc.tiff", image())
    ),
    "data: numbering from 001000": Case(lambda c: trial_args(c), 2, "cold_below", _renumber(1000)),
    "data: gap in numbering": Case(
        lambda c: trial_args(c), 2, "domain_C/test/good", lambda c: (c.data / "domain_C/test/good/000002.tiff").unlink()
    ),
    "data: non-TIFF file": Case(
        lambda c: trial_args(c), 2, "notes.txt", _set("domain_C/train/good/notes.txt", "hello")
    ),
    "data: broken symlink": Case(
        lambda c: trial_args(c),
        2,
        "broken symlink",
        _set("domain_C/train/good/000099.tiff", lambda p: p.symlink_to(p.parent / "gone.tiff")),
    ),
    "data: multi-page TIFF": Case(
        lambda c: trial_args(c), 2, "000001.tiff: 2 pages", _set("domain_C/train/good/000001.tiff", _two_pages)
    ),
    "data: conditions.csv unknown condition": Case(
        lambda c: trial_args(c),
        2,
        "lukewarm",
        _set("conditions.csv", "file,condition\ndomain_C/test/good/000000.tiff,lukewarm\n"),
    ),
    "data: train_shots above what exists": Case(
        lambda c: trial_args(c, "data.train_shots=500"), 2, "data.train_shots=500"
    ),
    "data: winclip k_shot above what exists": Case(
        lambda c: ["trial", "--out", str(c.tmp / "out"), *sets(f"data.root={c.data}", *TINY_CLIP, "model.k_shot=50")],
        2,
        "model.k_shot=50 but",
    ),
    "data: reference_source test without shots": Case(
        lambda c: trial_args(c, "data.reference_source=test"), 2, "data.train_shots"
    ),
    "data: val_fraction 1": Case(lambda c: trial_args(c, "data.val_fraction=1"), 2, "data.val_fraction"),
    # ---------------------------------------------------------------- trial config
    "config: unknown section": Case(lambda c: trial_args(c, "dat.root=x"), 2, "dat"),
    "config: unknown model": Case(lambda c: trial_args(c, "model.name=patchkore"), 2, "patchkore"),
    "config: unknown model field": Case(lambda c: trial_args(c, "model.kk=3"), 2, "model.kk"),
    "config: wrong type": Case(lambda c: trial_args(c, "model.k=abc"), 2, "model.k"),
    "config: k = 0": Case(lambda c: trial_args(c, "model.k=0"), 2, "model.k"),
    "config: image_size 0": Case(lambda c: trial_args(c, "data.image_size=0"), 2, "data.image_size"),
    "config: image_size negative": Case(lambda c: trial_args(c, "data.image_size=[-32,96]"), 2, "data.image_size"),
    "config: image_size below backbone stride": Case(lambda c: trial_args(c, "data.image_size=[8,24]"), 2, ">= 16 px"),
    "config: unknown backbone": Case(lambda c: trial_args(c, "model.backbone=resnet81"), 2, "resnet81"),
    "config: layer the backbone lacks": Case(lambda c: trial_args(c, "model.layers=[layer9]"), 2, "layer9"),
    "config: ViT layers on a CNN": Case(
        lambda c: [
            "trial",
            "--out",
            str(c.tmp / "out"),
            *sets(f"data.root={c.data}", "model.name=ca_patchcore", "model.backbone=resnet18"),
        ],
        2,
        "blocks.8",
    ),
    "config: DRAEM size not a multiple of 32": Case(
        lambda c: ["trial", *sets(f"data.root={c.data}", "model.name=draem", "data.image_size=[31,95]")],
        2,
        "multiple of 32",
    ),
    "config: cut_w wider than the input": Case(
        lambda c: ["trial", *sets(f"data.root={c.data}", "model.name=cutpaste", "data.image_size=[32,96]")],
        2,
        "model.cut_w=[2, 127] reaches 127 px",
    ),
    "config: patch_width_range wider than the input": Case(
        lambda c: [
            "trial",
            *sets(f"data.root={c.data}", "model.name=draem_sevnet", "data.image_size=[32,96]"),
            *sets("model.patch_width_range=[8,128]"),
        ],
        2,
        "model.patch_width_range=[8, 128] reaches 128 px",
    ),
    "config: --set without =": Case(lambda c: ["trial", "--set", "model.k"], 2, "model.k"),
    "config: --config missing": Case(lambda c: ["trial", "--config", str(c.tmp / "t.yaml")], 2, "t.yaml"),
    "config: --config is a directory": Case(lambda c: ["trial", "--config", str(c.tmp)], 2, "is a directory"),
    "config: --config invalid YAML": Case(
        lambda c: ["trial", "--config", str(c.tmp / "t.yaml")],
        2,
        "not valid YAML",
        lambda c: (c.tmp / "t.yaml").write_text("model: {name: ["),
    ),
    "config: --config not a mapping": Case(
        lambda c: ["trial", "--config", str(c.tmp / "t.yaml")],
        2,
        "mapping",
        lambda c: (c.tmp / "t.yaml").write_text("- 1\n- 2\n"),
    ),
    "config: weights file missing": Case(
        lambda c: trial_args(c, "model.pretrained=true", f"model.weights={c.tmp}/w.pth"), 2, "w.pth"
    ),
    "config: pretrained weights not cached": Case(
        lambda c: trial_args(c, "model.pretrained=true"), 2, "model.pretrained=false"
    ),
    "config: CLIP weights not cached (winclip)": Case(
        lambda c: ["trial", "--out", str(c.tmp / "out"), *sets(f"data.root={c.data}", "model.name=winclip")],
        2,
        "ViT-B-16-plus-240",
    ),
    "config: train_shots contradicts winclip's k_shot": Case(
        lambda c: ["trial", *sets(f"data.root={c.data}", "model.name=winclip", "model.k_shot=2", "data.train_shots=4")],
        2,
        "model.k_shot=2",
    ),
    "config: clip_model not a plain CLIP ViT": Case(
        lambda c: ["trial", *sets(f"data.root={c.data}", "model.name=winclip", "model.clip_model=RN50")], 2, "RN50"
    ),
    "config: ca_winclip gate_k above refs_per_bank": Case(
        lambda c: ["trial", *sets(f"data.root={c.data}", "model.name=ca_winclip", "model.gate_k=3")], 2, "gate_k=3"
    ),
    "config: dinomaly encoder weights not cached": Case(
        lambda c: ["trial", "--out", str(c.tmp / "out"), *sets(f"data.root={c.data}", *DINO)],
        2,
        "vit_small_patch14_reg4_dinov2",
    ),
    "config: dinomaly input not a multiple of its patch": Case(
        lambda c: ["trial", *sets(f"data.root={c.data}", *DINO, "data.center_crop=[20,80]")], 2, "multiple of 14"
    ),
    "config: center crop larger than the resized image": Case(
        lambda c: ["trial", *sets(f"data.root={c.data}", *DINO, "data.center_crop=[56,84]")], 2, "data.center_crop"
    ),
    "config: k larger than the memory bank": Case(
        lambda c: trial_args(c, "model.k=100000", "data.train_shots=1", "model.coreset_ratio=1.0"),
        2,
        "model.k=100000",
        fits=True,
    ),
    # ---------------------------------------------------------------- trial outputs
    "output: --out is a file": Case(lambda c: trial_args(c), 2, "is a file", lambda c: (c.tmp / "out").write_text("x")),
    "output: --out holds another trial": Case(
        lambda c: trial_args(c, "model.k=1"), 2, "holds the results", _out_holds_other_trial
    ),
    "output: failure never replaces an ok result": Case(
        lambda c: trial_args(c), 2, "000001.tiff", _out_ok_then_broken_data
    ),
    "trial: --out holds the same trial on changed data": Case(
        lambda c: trial_args(c), 2, "other data (domain_C/test changed since", _out_ok_then_changed_data
    ),
    "trial: --out holds the same trial without a data fingerprint": Case(
        lambda c: trial_args(c),
        2,
        "without a data fingerprint",
        lambda c: _out_ok_then_changed_data(c, keep_fingerprint=False),
    ),
    # ---------------------------------------------------------------- sweep spec
    "spec: missing file": Case(lambda c: ["sweep", "plan", str(c.tmp / "nope.yaml")], 2, "nope.yaml"),
    "spec: a directory": Case(lambda c: ["sweep", "plan", str(c.tmp)], 2, "is a directory"),
    "spec: unknown model": Case(lambda c: ["sweep", "plan", spec(c, models={"patchcor": {}})], 2, "patchcor"),
    "spec: unknown axis path": Case(lambda c: ["sweep", "plan", spec(c, axes={"model.kk": [1]})], 2, "model.kk"),
    "spec: axis value of the wrong type": Case(
        lambda c: ["sweep", "plan", spec(c, axes={"model.k": [1, "x"]})], 2, "model.k='x'"
    ),
    "spec: axis of another model": Case(
        lambda c: ["sweep", "plan", spec(c, axes={"model.gating": ["p90"]})], 2, "model.gating"
    ),
    "spec: unknown top-level field": Case(lambda c: ["sweep", "plan", spec(c, seed=[0])], 2, "seed"),
    "spec: duplicate top-level key": Case(
        lambda c: ["sweep", "plan", spec(c, "axes:\n  model.k: [5]\n")], 2, "duplicate key 'axes'"
    ),
    "spec: duplicate nested key": Case(
        lambda c: ["sweep", "plan", spec(c, "resources: {cpu: 1, cpu: 2}\n")], 2, "duplicate key 'cpu'"
    ),
    "spec: zip group not a mapping": Case(
        lambda c: ["sweep", "plan", spec(c, axes={"zip": [["model.k", [1, 3]]]})], 2, "axes.zip[0]"
    ),
    "spec: zip group of empty lists": Case(
        lambda c: ["sweep", "plan", spec(c, axes={"zip": [{"model.k": []}]})], 2, "axes.zip[0]"
    ),
    "spec: no seeds": Case(lambda c: ["sweep", "plan", spec(c, seeds=[])], 2, "seeds"),
    "spec: empty output": Case(lambda c: ["sweep", "plan", spec(c, output="")], 2, "output: empty"),
    "spec: bad name": Case(lambda c: ["sweep", "plan", spec(c, name="my study")], 2, "name"),
    "spec: fractional GPU above 1": Case(
        lambda c: ["sweep", "plan", spec(c, resources={"gpu": 1.5})], 2, "resources.gpu"
    ),
    "spec: asha for a model without a per-epoch metric": Case(
        lambda c: ["sweep", "plan", spec(c, scheduler="asha")], 2, "per-epoch"
    ),
    "spec: unknown backbone": Case(
        lambda c: ["sweep", "plan", spec(c), "--set", "trial.model.backbone=resnet81"], 2, "resnet81"
    ),
    # ---------------------------------------------------------------- model configs no trial can run (issue 20)
    "spec: draem_sevnet with to_rgb true": Case(
        lambda c: plan_model(c, {"name": "draem_sevnet"}, {"image_size": [32, 96], "to_rgb": True}),
        2,
        "data.to_rgb=true does not suit model draem_sevnet",
    ),
    "spec: anomalib unknown backbone": Case(
        lambda c: plan_model(c, {"name": "padim", "backbone": "resnet81", "pretrained": False}),
        2,
        "model.backbone: unknown backbone 'resnet81'",
    ),
    "spec: anomalib layer the backbone lacks": Case(
        lambda c: plan_model(c, {"name": "dfm", "backbone": "resnet18", "layer": "layer9", "pretrained": False}),
        2,
        "model.layer: layers ['layer9'] are not in backbone 'resnet18'",
    ),
    "spec: anomalib backbone its code does not build": Case(
        lambda c: plan_model(c, {"name": "uninet", "student_backbone": "resnet18", "pretrained": False}),
        2,
        "model.student_backbone='resnet18': anomalib's uninet builds only",
    ),
    "spec: efficient_ad with imagenet normalization": Case(
        lambda c: plan_model(c, {"name": "efficient_ad", "pretrained": False}, {"normalization": "imagenet"}),
        2,
        "data.normalization=imagenet does not suit model efficient_ad",
    ),
    "spec: winclip with to_rgb false": Case(
        lambda c: plan_model(
            c, {"name": "winclip", "clip_model": "hdmap-tiny-clip", "pretrained": False}, {"to_rgb": False}
        ),
        2,
        "data.to_rgb=false does not suit model winclip",
    ),
    "spec: winclip empty class_name": Case(
        lambda c: plan_model(
            c,
            {"name": "winclip", "clip_model": "hdmap-tiny-clip", "pretrained": False},
            axes={"model.class_name": ["gearbox", " "]},
        ),
        2,
        "model.class_name: must name",
    ),
    "spec: ca_patchcore shots_per_bank above the bank": Case(
        lambda c: plan_model(
            c,
            {"name": "ca_patchcore", "backbone": "resnet18", "layers": ["layer2"], "pretrained": False},
            {"image_size": [32, 96]},
            {"model.shots_per_bank": [2, 50]},
        ),
        2,
        "model.shots_per_bank=50: the p90 gate",
    ),
    "spec: ca_winclip refs_per_bank above the bank": Case(
        lambda c: plan_model(
            c, {"name": "ca_winclip", "clip_model": "hdmap-tiny-clip", "pretrained": False, "refs_per_bank": 50}
        ),
        2,
        "model.refs_per_bank=50: the p90 gate",
    ),
    "spec: cflow input too small for its fiber batches": Case(
        lambda c: plan_model(
            c,
            {"name": "cflow", "backbone": "resnet18", "layers": ["layer2", "layer3"], "pretrained": False},
            {"image_size": [32, 32]},
        ),
        2,
        "fewer than model.fiber_batch_size=64",
    ),
    "spec: csflow side not a multiple of 128": Case(
        lambda c: plan_model(c, {"name": "csflow", "pretrained": False}, {"image_size": [128, 192]}),
        2,
        "each side a multiple of 128",
    ),
    "spec: supersimplenet input too small for its Perlin masks": Case(
        lambda c: plan_model(
            c, {"name": "supersimplenet", "backbone": "resnet18", "pretrained": False}, {"image_size": [64, 192]}
        ),
        2,
        "each side >= 65 px, got [64, 192]",
    ),
    "spec: uninet side not a multiple of 32": Case(
        lambda c: plan_model(c, {"name": "uninet", "pretrained": False}, {"image_size": [48, 96]}),
        2,
        "each side a multiple of 32",
    ),
    "spec: dfm feature map smaller than its pooling kernel": Case(
        lambda c: plan_model(c, {"name": "dfm", "backbone": "resnet18", "pretrained": False}, {"image_size": [32, 96]}),
        2,
        "too small for model.pooling_kernel_size=4",
    ),
    "spec: dfkde n_pca_components 0": Case(
        lambda c: plan_model(
            c, {"name": "dfkde", "backbone": "resnet18", "pretrained": False}, axes={"model.n_pca_components": [4, 0]}
        ),
        2,
        "model.n_pca_components=0: model.n_pca_components: Input should be greater than or equal to 1",
    ),
    "spec: dfkde n_pca_components above the fit images": Case(
        lambda c: plan_model(c, {"name": "dfkde", "backbone": "resnet18", "pretrained": False}),
        2,
        "model.n_pca_components=16 exceeds the 11 fit images",
    ),
    "spec: padim n_features 0": Case(
        lambda c: plan_model(
            c, {"name": "padim", "backbone": "resnet18", "pretrained": False}, axes={"model.n_features": [0]}
        ),
        2,
        "model.n_features: Input should be greater than or equal to 1",
    ),
    "spec: padim n_features above its layers' channels": Case(
        lambda c: plan_model(
            c, {"name": "padim", "backbone": "resnet18", "layers": ["layer1"], "pretrained": False, "n_features": 100}
        ),
        2,
        "model.n_features=100 exceeds the 64 channels of layers layer1",
    ),
    "spec: fastflow flow_steps 0": Case(
        lambda c: plan_model(
            c, {"name": "fastflow", "backbone": "resnet18", "pretrained": False}, axes={"model.flow_steps": [2, 0]}
        ),
        2,
        "model.flow_steps: Input should be greater than or equal to 1",
    ),
    "spec: --set without =": Case(lambda c: ["sweep", "plan", spec(c), "--set", "resources"], 2, "resources"),
    "spec: output is a file": Case(
        lambda c: ["sweep", "plan", spec(c, output=str(c.tmp / "f"))],
        2,
        "is a file",
        lambda c: (c.tmp / "f").write_text("x"),
    ),
    "spec: gs:// output that does not answer": Case(  # pyarrow alone retries it for minutes, saying nothing
        lambda c: ["sweep", "plan", spec(c, output=f"gs://corpus/x?endpoint_override=127.0.0.1:{_closed_port()}")],
        2,
        "output gs://corpus/x/corpus",
    ),
    "spec: credentials in the output URI are not echoed": Case(
        lambda c: ["sweep", "plan", spec(c, output=f"s3://{KEY_ID}:{SECRET}@lab/studies?regoin=eu-west-1")],
        2,
        "output s3://***@lab/studies/corpus?regoin=eu-west-1: not reachable",
        absent=(KEY_ID, SECRET),
    ),
    "spec: credential query parameters in the output URI are not echoed": Case(
        lambda c: ["sweep", "plan", spec(c, output=f"s3://lab/studies?access_key={KEY_ID}&secret_key={SECRET}")],
        2,
        "access_key=***&secret_key=***",
        absent=(KEY_ID, SECRET),
    ),
    "spec: data root missing": Case(
        lambda c: ["sweep", "plan", spec(c, data={"root": str(c.tmp / "gone")})], 2, "gone"
    ),
    "spec: corrupt file found before launch": Case(
        lambda c: ["sweep", "plan", spec(c)], 2, "000005.tiff", _set("domain_C/test/fault/000005.tiff", "garbage")
    ),
    "spec: domain all on a root without every domain": Case(
        lambda c: ["sweep", "plan", spec(c, axes={"data.domain": ["all", "C"]})], 2, "no domain_B, domain_D folder"
    ),
    "spec: domain all on a simulated root lacking domains": Case(
        lambda c: [
            "sweep",
            "plan",
            spec(
                c, data={"root": str(c.tmp / "sim"), "simulate": {"domains": ["A", "C"]}}, axes={"data.domain": ["all"]}
            ),
        ],
        2,
        "add B, D to data.simulate.domains",
    ),
    "spec: train_shots above what exists": Case(
        lambda c: ["sweep", "plan", spec(c), "--set", "trial.data.train_shots=99"], 2, "data.train_shots=99"
    ),
    "run: output is a file": Case(
        lambda c: ["sweep", "run", spec(c, output=str(c.tmp / "f"))],
        2,
        "is a file",
        lambda c: (c.tmp / "f").write_text("x"),
    ),
    "run: corrupt file found before launch": Case(
        lambda c: ["sweep", "run", spec(c)], 2, "000005.tiff", _set("domain_C/test/fault/000005.tiff", "garbage")
    ),
    "spec: data changed since the stored results": Case(
        lambda c: ["sweep", "plan", spec(c)],
        2,
        "other data (domain_C/train changed since",
        _sweep_done_then_data_changed,
    ),
    "run: data changed since the stored results": Case(
        lambda c: ["sweep", "run", spec(c)],
        2,
        "other data (domain_C/train changed since",
        _sweep_done_then_data_changed,
    ),
    "run: credentials in an unreachable output URI are not echoed": Case(
        lambda c: ["sweep", "run", spec(c), "--set", f"output={_unreachable_s3()}"],
        2,
        "not reachable",
        absent=(KEY_ID, SECRET),
    ),
    "run: another driver holds the sweep": Case(
        lambda c: ["sweep", "run", spec(c)], 2, "being run by another `hdmap sweep run`", _another_driver
    ),
    "run: --address where no cluster answers": Case(
        lambda c: ["sweep", "run", spec(c), "--address", f"127.0.0.1:{_closed_port()}"], 2, "no Ray cluster"
    ),
    # ---------------------------------------------------------------- report
    "report: folder missing": Case(lambda c: ["report", str(c.tmp / "nope")], 2, "nope"),
    "report: folder without results": Case(lambda c: ["report", str(c.tmp)], 2, "results.parquet"),
    "report: damaged sweep.json": Case(
        lambda c: ["report", str(c.tmp / "copied")], 2, "sweep.json", _damaged_sweep_json
    ),
    "report: damaged results file": Case(
        lambda c: ["report", str(c.tmp / "bad")],
        2,
        "bad",
        lambda c: (c.tmp / "bad").mkdir() or (c.tmp / "bad/results.parquet").write_bytes(b"PAR1 not parquet"),
    ),
    "report: --out is a file": Case(
        lambda c: ["report", str(c.tmp / "trial"), "--out", str(c.tmp / "f")],
        2,
        lambda c: str(c.tmp / "f"),
        lambda c: guard_trial_out(c) and (c.tmp / "f").write_text("x"),
    ),
    "report: credentials in an unknown kind of URI are not echoed": Case(
        lambda c: ["report", f"sftp://{KEY_ID}:{SECRET}@lab/studies/x"],
        2,
        "cannot open sftp://***@lab/studies/x: Unrecognized filesystem type in URI: sftp://***@lab/studies/x",
        absent=(KEY_ID, SECRET),
    ),
    "report: credentials in an unreachable URI are not echoed": Case(
        lambda c: ["report", _unreachable_s3()], 2, "cannot open s3://***@lab/studies", absent=(KEY_ID, SECRET)
    ),
    # ---------------------------------------------------------------- simulate
    "simulate: n-train 0": Case(lambda c: ["simulate", str(c.tmp / "s"), "--n-train", "0"], 2, "--n-train"),
    "simulate: unknown domain": Case(lambda c: ["simulate", str(c.tmp / "s"), "--domains", "A,X"], 2, "'X'"),
    "simulate: root is a file": Case(
        lambda c: ["simulate", str(c.tmp / "f")], 2, "f", lambda c: (c.tmp / "f").write_text("x")
    ),
    "simulate: root holds data it did not write": Case(
        lambda c: ["simulate", str(c.tmp / "real")],
        2,
        "real data",
        lambda c: (c.tmp / "real/domain_A").mkdir(parents=True),
    ),
}


def _unreachable_s3() -> str:
    """An S3 URI with credentials whose endpoint refuses connections (pyarrow gives up after its retries)."""
    return (
        f"s3://{KEY_ID}:{SECRET}@lab/studies?endpoint_override=127.0.0.1:{_closed_port()}&scheme=http&region=us-east-1"
    )


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _digest(paths: list[Path]) -> dict[str, tuple[str, int]]:
    """Content and mtime: a file rewritten with the same bytes was still written to."""
    return {str(p): (hashlib.sha1(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in paths}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, tmp_path, base_data, trial_out, monkeypatch, request):
    case = CASES[name]
    data = tmp_path / "data"
    shutil.copytree(base_data, data)
    ctx = Ctx(tmp=tmp_path, data=data, trial_out=trial_out)
    if case.setup:
        case.setup(ctx)
    argv = case.argv(ctx)
    before = _digest(ctx.guarded)
    fitted = []
    original_fit = lp.Trainer.fit
    monkeypatch.setattr(lp.Trainer, "fit", lambda self, *a, **k: fitted.append(1) or original_fit(self, *a, **k))
    import sweeps.runner

    monkeypatch.setattr(sweeps.runner.SweepRun, "run_tune", lambda *a, **k: pytest.fail("Ray started for a bad input"))

    result = CliRunner().invoke(app, argv)
    output = result.output  # stdout and stderr, as the user sees them
    culprit = case.names(ctx) if callable(case.names) else case.names
    assert result.exit_code == case.code, f"{name}: exit {result.exit_code}\n{output}\n{result.exception!r}"
    assert isinstance(result.exception, SystemExit), f"{name}: raised {result.exception!r}"
    assert "Traceback" not in output, output
    assert culprit in output, f"{name}: {culprit!r} not named in:\n{output}"
    assert case.fits or not fitted, f"{name}: fitted before the mistake was reported"
    assert _digest(ctx.guarded) == before, f"{name}: an existing result changed"
    for secret in case.absent:
        shown = output.replace("\n", "") + repr(result.exception)  # a line wrapped by the terminal width too
        assert secret not in shown, f"{name}: {secret!r} echoed"
        written = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != "spec.yaml"]  # the spec is the user's
        assert not [p for p in written if secret.encode() in p.read_bytes()], f"{name}: {secret!r} written"


def test_resume_command_keeps_no_credential(tmp_path, base_data, monkeypatch):
    """An interrupted sweep prints the command that resumes it (not a CASES entry: it needs a sweep that stopped);
    the credentials of an `--set output=URI` in it are shown as ***."""
    import signal

    import sweeps.runner

    stopped = sweeps.runner.SweepOutcome(sweep_dir="-", total=2, skipped=0, not_run=2, interrupted=signal.SIGINT)
    monkeypatch.setattr(sweeps.runner, "run_sweep", lambda plan, **kwargs: stopped)
    uri = f"s3://{KEY_ID}:{SECRET}@lab/studies?region=eu-west-1"
    result = CliRunner().invoke(
        app, ["sweep", "run", spec(Ctx(tmp=tmp_path, data=base_data)), "--set", f"output={uri}"]
    )
    shown = result.output.replace("\n", "")
    assert result.exit_code == 130 and "--set 'output=s3://***:***@lab/studies?region=eu-west-1'" in shown, shown
    assert KEY_ID not in shown and SECRET not in shown


def test_output_check_is_bounded_whatever_the_scheme(monkeypatch):
    """An object-storage output that never answers is one error naming it within OUTPUT_PROBE_S, never a silent
    hang (not a CASES entry: it needs a store that hangs; gs:// through pyarrow is the corpus case)."""
    import threading
    import types

    import sweeps.preflight
    from hdmap.errors import OutputError

    release = threading.Event()
    hang = types.SimpleNamespace(from_uri=lambda uri: release.wait(30))
    monkeypatch.setattr(sweeps.preflight, "pafs", types.SimpleNamespace(FileSystem=hang, FileType=None))
    monkeypatch.setattr(sweeps.preflight, "OUTPUT_PROBE_S", 0.5)
    start = time.monotonic()
    try:
        with pytest.raises(OutputError, match=r"^output s3://lab/x: no answer within 0.5 s"):
            sweeps.preflight.check_output("s3://lab/x")
    finally:
        release.set()
    assert time.monotonic() - start < 5


def test_report_keeps_results_it_did_not_write(tmp_path, trial_out):
    """`hdmap report` on results it did not write (a trial output, a copied sweep with or without its parts)
    reports them as they are and changes none of their files."""
    ctx = Ctx(tmp=tmp_path, data=tmp_path, trial_out=trial_out)
    for folder in (guard_trial_out(ctx), copy_sweep_without_parts(ctx), copy_sweep_with_parts(ctx)):
        rows = pq.read_table(folder / "results.parquet").num_rows
        before = _digest(ctx.guarded)
        result = CliRunner().invoke(app, ["report", str(folder)])
        assert result.exit_code == 0, result.output
        assert _digest(ctx.guarded) == before
        assert rows > 0 and "1 ok" in (folder / "report.md").read_text()
    assert len(CASES) >= 40


# ---------------------------------------------------------------- a full disk (not a CASES entry: it needs a disk
# that fills up mid-run, simulated at the one place results are written: hdmap.io)


class FullDisk:
    """Files hdmap.io writes under `under` fail like a full disk once `free` bytes are used up: OSError ENOSPC from
    write(), without a file name, as Python raises it. `free = None`: room enough (the space was freed)."""

    def __init__(self, monkeypatch, under: Path) -> None:
        import builtins

        import hdmap.io

        self.free: int | None = None

        def open_(path, mode="r", *args, **kwargs):
            f = builtins.open(path, mode, *args, **kwargs)
            return _FillingFile(f, self) if "w" in mode and Path(path).is_relative_to(under) else f

        monkeypatch.setattr(hdmap.io, "open", open_, raising=False)


class _FillingFile:
    def __init__(self, f, disk: FullDisk) -> None:
        self._f, self._disk, self._written = f, disk, 0

    def write(self, data) -> int:
        if self._disk.free is not None:
            if len(data) > self._disk.free:
                self._disk.free += self._written  # the writer removes its temporary file (hdmap.io always does)
                raise OSError(errno.ENOSPC, "No space left on device")
            self._disk.free -= len(data)
            self._written += len(data)
        return self._f.write(data)

    def __getattr__(self, name: str):
        return getattr(self._f, name)

    def __enter__(self) -> _FillingFile:
        return self

    def __exit__(self, *exc) -> None:
        self._f.close()


def _error_line(output: str) -> str:
    [line] = [line for line in output.splitlines() if line.startswith("error:")]
    return line


def test_trial_on_a_full_disk_is_one_line_exit_1_and_no_result(tmp_path, base_data, monkeypatch):
    """The disk fills up while `hdmap trial` writes its outputs, after fitting: one line naming the file and its disk,
    exit 1, no traceback, and no results.parquet (written last: the commit marker) nor a temporary file left."""
    out = tmp_path / "out"
    FullDisk(monkeypatch, out).free = 20_000  # scores.parquet and config.yaml fit, results.parquet does not
    result = CliRunner().invoke(app, ["trial", "--out", str(out), *sets(f"data.root={base_data}", *TINY)])
    assert result.exit_code == 1, f"{result.output}\n{result.exception!r}"
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output, result.output
    line = _error_line(result.output)
    assert f"no space left on device writing {out / 'results.parquet'} (disk " in line, line
    assert "did not finish" in line and "run it again" in line, line
    assert not (out / "results.parquet").exists() and not list(out.glob(".*.tmp"))


@pytest.mark.parametrize("fills_in", ["trial", "driver"])
def test_sweep_on_a_full_disk_stops_records_and_resumes(tmp_path, base_data, monkeypatch, fills_in):
    """The disk fills up in a sweep, in a trial's results part (the worker reports it, the run stops there) or in the
    driver's closing compaction: one line naming the file and its disk, exit 1, no traceback, sweep.json "failed"
    with that line, no temporary file; freed space and the same command resume: finished trials are not re-run.
    Tune is stood in for by the real worker run in this process (no Ray), stopping on a full-disk report as
    DiskFullStop makes Tune stop."""
    import ray.tune

    import sweeps.runner as runner
    import sweeps.worker as worker
    from sweeps.result_keys import DISK_FULL

    sweep = tmp_path / "sweeps" / "corpus"
    disk = FullDisk(monkeypatch, sweep)
    reports: list[dict] = []
    ran: list[str] = []
    fills = [fills_in]  # the first run only
    monkeypatch.setattr(ray.tune, "report", reports.append)
    monkeypatch.setattr(worker, "_freeze_imported_objects", lambda: None)  # gc.freeze is for worker processes

    def tune_in_process(run, todo, skipped) -> None:
        context = worker.TrialContext(sweep=run.plan.spec.name, spec_hash=run.plan.spec_hash)
        for i, cfg in enumerate(todo):
            if fills == ["trial"] and i == 1:
                disk.free = 20_000  # the second trial's scores part fits, its results part does not
            ran.append(cfg.trial_id)
            worker.trial_trainable({"trial": cfg.model_dump(mode="json")}, str(sweep), context)
            if reports and reports[-1].get(DISK_FULL):
                break
        if fills == ["driver"]:
            disk.free = 3_000  # sweep.json fits, a compacted chunk does not
        runner.raise_if_disk_full(reports)

    monkeypatch.setattr(runner.SweepRun, "run_tune", tune_in_process)
    c = Ctx(tmp=tmp_path, data=base_data)
    three = spec(c, axes={"model.k": [1, 2, 3]}, tracking={"wandb": {"mode": "disabled"}})
    argv = ["sweep", "run", three, "--no-report"]

    first = CliRunner().invoke(app, argv)
    assert first.exit_code == 1, f"{first.output}\n{first.exception!r}"
    assert isinstance(first.exception, SystemExit) and "Traceback" not in first.output, first.output
    line = _error_line(first.output)
    assert f"no space left on device writing {sweep}/" in line and "(disk " in line, line
    assert "the sweep stopped; free space, then run the same command to resume" in line, line
    parts = {p.name: p.stat().st_mtime_ns for p in (sweep / "parts" / "results").glob("*.parquet")}
    assert len(parts) == {"trial": 1, "driver": 3}[fills_in] and not list(sweep.rglob(".*.tmp"))
    meta = json.loads((sweep / "sweep.json").read_text())
    assert meta["state"] == "failed" and meta["error"] in line and meta["n_without_result"] == 3 - len(parts), meta

    disk.free, ran[:], reports[:], fills[:] = None, [], [], []
    second = CliRunner().invoke(app, argv)
    assert second.exit_code == 0, second.output
    assert len(ran) == 3 - len(parts) and not {f"{t}.parquet" for t in ran} & set(parts)  # finished: not re-run
    assert all((sweep / "parts" / "results" / name).stat().st_mtime_ns == mtime for name, mtime in parts.items())
    assert json.loads((sweep / "sweep.json").read_text())["state"] == "complete"
    assert pq.read_table(sweep / "results.parquet")["status"].to_pylist() == ["ok"] * 3


def test_a_full_disk_report_stops_tune():
    """DiskFullStop: a trial's full-disk report stops the whole Tune run (every later trial would fail alike), and
    that trial is not marked stopped by the scheduler (which PruneRecorder would record as pruned)."""
    from sweeps.callbacks import DiskFullStop
    from sweeps.result_keys import DISK_FULL

    stop = DiskFullStop()
    assert stop("t1", {"hdmap_done": True}) is False and not stop.stop_all()
    assert stop("t2", {DISK_FULL: "no space left on device writing x"}) is False and stop.stop_all()
