"""The data fingerprint (hdmap/data/fingerprint.py): it follows exactly the files a trial reads, the sweep's
pre-launch listing stamps each trial with the one `hdmap trial` computes, and rows written before fingerprints
existed are named, never a crash. Refusals on changed data: tests/test_bad_inputs.py ("... changed data ...")."""

import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from hdmap.config import DataConfig, TrialConfig
from hdmap.data.fingerprint import changed_parts, data_fingerprint
from hdmap.trial import failed_trial
from sweeps.cli import app
from sweeps.preflight import check_data
from sweeps.spec import load_spec
from sweeps.store import ResultStore
from tests.test_data import write_layout

pytestmark = pytest.mark.usefixtures("fresh_arrays")


def _keeping_mtime(path: Path, write) -> None:
    """Rewrite `path` and put its mtime back: only what else changed (size, content) can show."""
    was = path.stat()
    write(path)
    os.utime(path, ns=(was.st_atime_ns, was.st_mtime_ns))


def _conditions(flip: str = "") -> str:
    rows = [
        f"{domain}/test/{sub}/{i:06d}.tiff,{'warm' if i >= 2 else 'cold'}"
        for domain in ("domain_A", "domain_C")
        for sub in ("good", "fault")
        for i in range(4)
    ]
    text = "file,condition\n" + "\n".join(rows) + "\n"
    return text.replace(f"{flip},cold", f"{flip},warm") if flip else text


def test_fingerprint_follows_exactly_the_data_a_trial_reads(tmp_path):
    root = write_layout(tmp_path / "r", domains=("domain_A", "domain_C"))
    cfg = DataConfig(root=str(root), domain="C")
    image = np.full((31, 95), 0.25, np.float32)
    changes = [
        ("a new file", lambda: tifffile.imwrite(root / "domain_C/train/good/extra.tiff", image), ["domain_C/train"]),
        (
            "a file's size (same mtime)",
            lambda: _keeping_mtime(
                root / "domain_C/test/good/000001.tiff", lambda p: p.write_bytes(p.read_bytes() + b"\0" * 8)
            ),
            ["domain_C/test"],
        ),
        (
            "a file's mtime (same size)",
            lambda: tifffile.imwrite(root / "domain_C/test/fault/000000.tiff", image),
            ["domain_C/test"],
        ),
        ("conditions.csv appears", lambda: (root / "conditions.csv").write_text(_conditions()), ["conditions.csv"]),
        (
            "conditions.csv content (same size and mtime)",
            lambda: _keeping_mtime(
                root / "conditions.csv", lambda p: p.write_text(_conditions("domain_C/test/good/000000.tiff"))
            ),
            ["conditions.csv"],
        ),
    ]
    before = data_fingerprint(cfg)
    assert data_fingerprint(cfg) == before  # an unchanged tree: the same fingerprint
    for what, change, parts in changes:
        change()
        after = data_fingerprint(cfg)
        assert changed_parts(before, after) == parts, what
        before = after
    tifffile.imwrite(root / "domain_A/train/good/extra.tiff", image)  # a domain this trial does not read
    assert data_fingerprint(cfg) == before
    assert "domain_A/test" in data_fingerprint(DataConfig(root=str(root), domain="C", test_domains=["A", "C"]))


def test_sweep_preflight_stamps_the_fingerprint_hdmap_trial_computes(tmp_path):
    """One listing before launch stamps every trial; the stamp travels to the worker (Tune's config is the dumped
    TrialConfig) and leaves the trial id alone."""
    root = write_layout(tmp_path / "r", domains=("domain_A", "domain_C"))
    spec = tmp_path / "s.yaml"
    spec.write_text(
        f"name: s\ndata: {{root: {root}}}\noutput: {tmp_path / 'out'}\n"
        "trial: {model: {backbone: resnet18, pretrained: false, layers: [layer2]}, data: {image_size: [32, 96]}}\n"
        "axes: {data.test_domains: [[C], [A, C]]}\n"
    )
    plan = load_spec(spec)
    ids = [t.trial_id for t in plan.trials]
    check_data(plan)
    stamps = [t.runtime.data_fingerprint for t in plan.trials]
    assert stamps == [data_fingerprint(t.data) for t in plan.trials] and stamps[0] != stamps[1]
    assert [t.trial_id for t in plan.trials] == ids
    shipped = TrialConfig.model_validate(plan.trials[1].model_dump(mode="json"))
    assert shipped.runtime.data_fingerprint == stamps[1]
    assert failed_trial(shipped, RuntimeError("x")).results_table()["data_fingerprint"].to_pylist() == [stamps[1]]


def test_finished_rows_without_a_fingerprint_count_as_done_and_are_named(tmp_path):
    """A store written before rows recorded a fingerprint: its finished trials stay done, and `sweep plan` says
    their data cannot be checked."""
    root = write_layout(tmp_path / "r")
    spec = tmp_path / "s.yaml"
    spec.write_text(
        f"name: s\ndata: {{root: {root}}}\noutput: {tmp_path / 'out'}\n"
        "trial: {model: {backbone: resnet18, pretrained: false, layers: [layer2]}, data: {image_size: [32, 96]}}\n"
        "axes: {model.k: [1, 3]}\n"
    )
    plan = load_spec(spec)
    old = failed_trial(plan.trials[0], RuntimeError("stands in for a finished trial"))
    old.rows[0].update(status="ok", error=None, data_fingerprint=None)
    ResultStore(str(tmp_path / "out" / "s")).write_trial(old, "s", plan.spec_hash)
    result = CliRunner().invoke(app, ["sweep", "plan", str(spec)])
    assert result.exit_code == 0, result.output
    assert "the store holds 1 finished trial without a data fingerprint" in " ".join(result.output.split())
    assert "already in the store (will not re-run): 1" in result.output
