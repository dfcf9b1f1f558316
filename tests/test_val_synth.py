"""`val_synth_auroc`: validation normals against their synthetic faults (hdmap/data/synthetic_val.py), a figure a
search may select on without test labels, per trial and per epoch."""

import shutil

import lightning as L
import numpy as np
import pytest
import tifffile

from hdmap.config import TrialConfig, load_trial_config
from hdmap.data.arrays import clear_cache
from hdmap.data.splits import build_trial_data
from hdmap.data.synthetic_val import faulted_copies
from hdmap.metric_catalogue import METRICS
from hdmap.trial import failed_trial, run_trial
from tests.conftest import TINY, tiny_overrides


def _faulted(overrides: list[str]):
    cfg = load_trial_config(None, overrides)
    return faulted_copies(build_trial_data(cfg.data, cfg.seed).val, cfg.eval.val_synth)


@pytest.mark.parametrize("kind", ["lines", "cutpaste"])
def test_every_validation_normal_gets_one_fault_the_same_for_every_model(sim_root, kind):
    """Two trials of other models (other input sizes) with the same seed see the identical faulted set; another
    eval.val_synth.seed another one. No test image is involved: the builder is given the validation normals only."""
    cfg = load_trial_config(None, tiny_overrides(sim_root))
    val = build_trial_data(cfg.data, cfg.seed).val
    kind_set = [f"eval.val_synth.kind={kind}"]
    patchcore = _faulted(tiny_overrides(sim_root) + kind_set)
    draem = _faulted(tiny_overrides(sim_root, "draem") + kind_set)
    np.testing.assert_array_equal(patchcore.images, draem.images)
    assert patchcore.images.shape == val.images.shape and (patchcore.labels == 1).all()
    assert all((f != n).any() for f, n in zip(patchcore.images, val.images))  # every image faulted
    assert (patchcore.severity > 0).all()
    other = _faulted(tiny_overrides(sim_root) + kind_set + ["eval.val_synth.seed=1"])
    assert not np.array_equal(other.images, patchcore.images)


def test_val_synth_auroc_never_reads_a_test_image(sim_root, tmp_path, fresh_arrays):
    """Rewriting every test image after a trial changes the test figures, not val_synth_auroc; every row has it."""
    root = tmp_path / "data"
    shutil.copytree(sim_root, root)
    cfg = load_trial_config(None, tiny_overrides(root) + ["data.test_domains=[A, C]"])
    before = run_trial(cfg).rows
    rewritten = list(root.glob("*/test/*/*.tiff"))
    for tiff in rewritten:
        tifffile.imwrite(tiff, np.ascontiguousarray(tifffile.imread(tiff)[::-1] * 3))
    clear_cache()  # the per-process split cache: the next trial decodes the rewritten files
    after = run_trial(cfg).rows
    assert len(rewritten) == 160 and len(before) == 2 and {r["test_domain"] for r in before} == {"domain_A", "domain_C"}
    value = before[0]["val_synth_auroc"]
    assert 0.0 <= value <= 1.0
    assert [r["val_synth_auroc"] for r in before + after] == [value] * 4
    assert [r["image_auroc"] for r in after] != [r["image_auroc"] for r in before]


@pytest.mark.parametrize(("severity_max", "perfect"), [(1000.0, True), (1e-9, False)])
def test_faults_a_model_cannot_miss_score_one(sim_root, severity_max, perfect):
    """Huge lines are ranked above every normal (1.0); invisible ones are not, so the first case can fail."""
    cfg = load_trial_config(None, tiny_overrides(sim_root) + [f"eval.val_synth.severity_max={severity_max}"])
    value = run_trial(cfg).rows[0]["val_synth_auroc"]
    assert (value == 1.0) is perfect and 0.0 <= value <= 1.0


class _Capture(L.Callback):
    """What a sweep's per-epoch reporter would read, where it reads it."""

    def __init__(self) -> None:
        self.values: list[float | None] = []

    def on_validation_epoch_end(self, trainer, module) -> None:
        if module.uses_validation and not trainer.sanity_checking:
            self._read(trainer)

    def on_train_epoch_end(self, trainer, module) -> None:
        if not module.uses_validation:
            self._read(trainer)

    def _read(self, trainer) -> None:
        value = trainer.callback_metrics.get("val_synth_auroc")
        self.values.append(None if value is None else float(value))


@pytest.mark.parametrize(
    ("model", "extra"),
    [("draem", ["model.epochs=3"]), ("stfpm", ["model.epochs=2"])],  # validates every epoch; never validates
)
def test_per_epoch_value_reaches_callback_metrics(sim_root, model, extra):
    capture = _Capture()
    cfg = load_trial_config(None, tiny_overrides(sim_root, model) + extra)
    row = run_trial(cfg, callbacks=[capture]).rows[0]
    assert len(capture.values) == cfg.model.max_epochs()
    assert all(v is not None and 0.0 <= v <= 1.0 for v in capture.values)
    assert capture.values[-1] == pytest.approx(row["val_synth_auroc"])  # the same model, the same predict path


def test_per_epoch_metrics_name_val_synth_auroc_for_trained_models(sim_root):
    draem = load_trial_config(None, tiny_overrides(sim_root, "draem"))
    assert draem.model.per_epoch_metrics() == {"val_loss", "val_synth_auroc"}
    one_epoch = load_trial_config(None, tiny_overrides(sim_root, "stfpm") + TINY["stfpm"])
    assert one_epoch.model.per_epoch_metrics() == {"train_loss"}
    assert load_trial_config(None, tiny_overrides(sim_root)).model.per_epoch_metrics() == set()


def test_default_configs_keep_their_trial_id():
    """Pinned before `eval.val_synth` existed: a default section is left out of the id; a set one is not."""
    assert TrialConfig().trial_id == "7a06c2fe93c3"
    draem = {"model": {"name": "draem", "epochs": 3}, "data": {"domain": "A", "image_size": [32, 96]}}
    assert TrialConfig.model_validate(draem).trial_id == "ef6761dc3d3b"
    assert TrialConfig.model_validate({"eval": {"val_synth": {"kind": "lines", "seed": 0}}}).trial_id == "7a06c2fe93c3"
    assert TrialConfig.model_validate({"eval": {"val_synth": {"seed": 1}}}).trial_id != "7a06c2fe93c3"


def test_error_rows_have_no_value_and_the_catalogue_allows_it_as_an_objective():
    assert failed_trial(TrialConfig(), RuntimeError("x")).rows[0].get("val_synth_auroc") is None
    assert failed_trial(TrialConfig(), RuntimeError("x")).results_table()["val_synth_auroc"].to_pylist() == [None]
    assert not METRICS["val_synth_auroc"].needs_test_labels and METRICS["val_synth_auroc"].higher_is_better
    assert METRICS["image_auroc"].needs_test_labels and METRICS["oracle_accuracy"].needs_test_labels
    assert not METRICS["fit_s"].needs_test_labels and not METRICS["threshold"].needs_test_labels
