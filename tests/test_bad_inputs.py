"""The bad-input corpus: every mistake a user can make gets one clear error, before anything is fitted.

Each case runs a real command line (in-process, through the typer app) on a small data root or results folder,
and asserts: the exit code; that the message names the culprit (file, field or value); that no Python traceback
reaches the user; that nothing was fitted when the mistake was detectable before; and that no existing result
file changed. Cases that fit first (a memory bank smaller than k is only known once it is built) say so.
"""

from __future__ import annotations

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

from hdmap.data.arrays import clear_cache
from hdmap.data.simulate import simulate
from sweeps.cli import app
from sweeps.lease import LEASE_FILE
from sweeps.store import ResultStore
from tests.test_lease import held_by

pytestmark = pytest.mark.usefixtures("fresh_arrays")

TINY = ["model.backbone=resnet18", "model.pretrained=false", "data.image_size=[32,96]", "model.coreset_ratio=0.5"]
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
    (c.data / "domain_C/test/fault/000001.tiff").write_bytes(b"not a tiff")
    clear_cache()  # a new `hdmap trial` process would decode again


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
    "data: conditions.csv unknown condition": Case(
        lambda c: trial_args(c),
        2,
        "lukewarm",
        _set("conditions.csv", "file,condition\ndomain_C/test/good/000000.tiff,lukewarm\n"),
    ),
    "data: train_shots above what exists": Case(
        lambda c: trial_args(c, "data.train_shots=500"), 2, "data.train_shots=500"
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
    "spec: --set without =": Case(lambda c: ["sweep", "plan", spec(c), "--set", "resources"], 2, "resources"),
    "spec: output is a file": Case(
        lambda c: ["sweep", "plan", spec(c, output=str(c.tmp / "f"))],
        2,
        "is a file",
        lambda c: (c.tmp / "f").write_text("x"),
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

    monkeypatch.setattr(sweeps.runner, "_run_tune", lambda *a, **k: pytest.fail("Ray started for a bad input"))

    result = CliRunner().invoke(app, argv)
    output = result.output  # stdout and stderr, as the user sees them
    culprit = case.names(ctx) if callable(case.names) else case.names
    assert result.exit_code == case.code, f"{name}: exit {result.exit_code}\n{output}\n{result.exception!r}"
    assert isinstance(result.exception, SystemExit), f"{name}: raised {result.exception!r}"
    assert "Traceback" not in output, output
    assert culprit in output, f"{name}: {culprit!r} not named in:\n{output}"
    assert case.fits or not fitted, f"{name}: fitted before the mistake was reported"
    assert _digest(ctx.guarded) == before, f"{name}: an existing result changed"


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
