"""Each model end to end on tiny simulated data, and the weight-loading rules."""

import numpy as np
import pytest
import timm
import torch

from hdmap.config import load_trial_config
from hdmap.models.backbones import WeightsNotFoundError
from hdmap.trial import run_trial
from tests.conftest import tiny_overrides


@pytest.mark.parametrize("model", ["patchcore", "draem"])
def test_model_end_to_end(sim_root, model):
    result = run_trial(load_trial_config(None, tiny_overrides(sim_root, model)))
    (row,) = result.rows
    assert row["status"] == "ok" and row["model"] == model
    assert 0.0 <= row["image_auroc"] <= 1.0 and row["n_test"] == 80
    assert result.scores.num_rows == 80 and np.isfinite(result.scores["score"].to_numpy()).all()
    if model == "patchcore":  # bright simulated bands are easy for PatchCore even with random features
        assert row["image_auroc"] > 0.6


def test_pretrained_without_local_weights_fails_precisely(sim_root, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch"))
    cfg = load_trial_config(None, [f"data.root={sim_root}", "model.backbone=resnet18", "model.pretrained=true"])
    with pytest.raises(WeightsNotFoundError) as err:
        run_trial(cfg)
    text = str(err.value)
    assert "'resnet18'" in text and "empty-hf" in text and "model.weights=" in text and "pretrained=false" in text


def test_weights_from_local_file_are_loaded(sim_root, tmp_path):
    torch.manual_seed(123)
    reference = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    from hdmap.data.transforms import HdmapTransform
    from hdmap.models.patchcore import PatchCoreConfig, PatchCoreModule

    module = PatchCoreModule(PatchCoreConfig(backbone="resnet18", weights=str(path)), HdmapTransform((64, 64)))
    loaded = module.model.feature_extractor.feature_extractor.state_dict()["layer1.0.conv1.weight"]
    assert torch.equal(loaded, reference.state_dict()["layer1.0.conv1.weight"])
    with pytest.raises(WeightsNotFoundError, match="no such file"):
        PatchCoreModule(
            PatchCoreConfig(backbone="resnet18", weights=str(tmp_path / "nope.pth")), HdmapTransform((64, 64))
        )


def test_draem_early_stopping_on_val_loss(sim_root):
    from hdmap.trial import run_trial as run

    cfg = load_trial_config(
        None, tiny_overrides(sim_root, "draem") + ["model.epochs=30", "model.early_stopping_patience=1", "model.lr=0.1"]
    )
    row = run(cfg).rows[0]
    assert row["status"] == "ok" and row["epochs_run"] < 30  # val_loss stopped improving: stopped early
