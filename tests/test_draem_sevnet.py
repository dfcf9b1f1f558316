"""DRAEM-SevNet end to end on tiny simulated data (every severity_input mode), its config rules and parts."""

import pickle

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from hdmap.config import ConfigError, load_trial_config
from hdmap.data.transforms import HdmapTransform
from hdmap.models.draem_sevnet import SEVERITY_INPUT_CHANNELS, DraemSevNet, DraemSevNetConfig, DraemSevNetModule
from hdmap.models.registry import MODELS
from hdmap.trial import run_trial


def _overrides(root, *extra):
    return [
        f"data.root={root}",
        "data.domain=C",
        "model.name=draem_sevnet",
        "model.epochs=1",
        "model.base_width=8",
        "model.severity_width=4",
        "data.image_size=[32,96]",
        "data.normalization=none",
        "data.to_rgb=false",
        "model.batch_size=8",
        *extra,
    ]


@pytest.mark.parametrize("mode", list(SEVERITY_INPUT_CHANNELS))
def test_trial_every_severity_input(sim_root, mode):
    result = run_trial(load_trial_config(None, _overrides(sim_root, f"model.severity_input={mode}")))
    (row,) = result.rows
    assert row["status"] == "ok" and row["model"] == "draem_sevnet" and row["n_test"] == 80
    scores = result.scores
    assert scores.num_rows == 80 and np.isfinite(scores["score"].to_numpy()).all()
    severity = scores["severity_pred"].to_numpy(zero_copy_only=False)
    assert np.isfinite(severity).all() and (severity >= 0).all()
    assert row["severity_mae"] is not None and np.isfinite(row["severity_mae"])


def test_weighted_average_score_and_smooth_l1(sim_root):
    cfg = load_trial_config(
        None,
        _overrides(
            sim_root,
            "model.score_combination=weighted_average",
            "model.score_severity_weight=0.3",
            "model.severity_loss=smooth_l1",
            "model.patch_aspect=[1.0, 2.0]",
            "model.patch_count=3",
        ),
    )
    result = run_trial(cfg)
    assert result.ok and np.isfinite(result.scores["score"].to_numpy()).all()


def test_early_stopping_is_configured_on_val_loss():
    """The stopping behaviour itself is shared with draem (AnomalyModule) and tested there."""
    from hdmap.data.transforms import HdmapTransform
    from hdmap.models.draem_sevnet import DraemSevNetConfig, build

    module = build(
        DraemSevNetConfig(early_stopping_patience=2, base_width=8),
        HdmapTransform((32, 96), to_rgb=False, normalization="none"),
    )
    (stopper,) = module.configure_callbacks()
    assert stopper.monitor == "val_loss" and stopper.patience == 2
    assert build(DraemSevNetConfig(base_width=8), HdmapTransform((32, 96), to_rgb=False)).configure_callbacks() == []


def test_gray_input_by_default_and_rgb_refused_by_the_config(sim_root):
    """Its networks read 1 channel: unset, data.to_rgb is false (the general default true never ran); set true, the
    config itself is refused, so `sweep plan` says so, not every trial after loading its data."""
    default = [o for o in _overrides(sim_root) if not o.startswith("data.to_rgb")]
    assert load_trial_config(None, default).data.to_rgb is False
    with pytest.raises(
        ConfigError, match=r"data\.to_rgb=true does not suit model draem_sevnet.*set data\.to_rgb=false"
    ):
        load_trial_config(None, _overrides(sim_root, "data.to_rgb=true"))


@pytest.mark.parametrize(
    "bad",
    [
        "model.severity_input=everything",
        "model.patch_count=4",
        "model.patch_aspect=wide",
        "model.patch_aspect=[0.5, 0.2]",
        "model.anomaly_probability=1.5",
        "model.severity_loss=l1",
        "model.score_combination=mean",
        "model.patch_width_range=[9, 3]",
    ],
)
def test_bad_config_names_the_field(sim_root, bad):
    with pytest.raises((ConfigError, ValidationError)) as err:
        load_trial_config(None, _overrides(sim_root, bad))
    assert bad.split("=")[0].split(".")[1] in str(err.value)


def test_all_loss_weights_zero_rejected():
    with pytest.raises(ValidationError, match="nothing to train"):
        DraemSevNetConfig(w_recon=0, w_seg=0, w_sev=0)


def test_registry_entry_enables_asha():
    assert MODELS["draem_sevnet"].per_epoch_metric == "val_loss"


@pytest.mark.parametrize("mode,channels", list(SEVERITY_INPUT_CHANNELS.items()))
def test_severity_subnetwork_input_channels(mode, channels):
    net = DraemSevNet(8, mode, 4)
    assert net.severity_subnetwork.features[0].in_channels == channels
    recon, logits, severity = net(torch.rand(3, 1, 32, 96))
    assert recon.shape == (3, 1, 32, 96) and logits.shape == (3, 2, 32, 96) and severity.shape == (3,)
    assert (severity >= 0).all()


def test_module_is_picklable_and_validation_is_repeatable():
    module = DraemSevNetModule(
        DraemSevNetConfig(base_width=8, severity_width=4), HdmapTransform((32, 96), to_rgb=False)
    )
    clone = pickle.loads(pickle.dumps(module))
    batch = {"image": torch.rand(4, 1, 32, 96)}
    logged = []
    module.log = lambda name, value, **kw: logged.append((name, float(value)))
    module.eval()
    module.validation_step(batch, 0)
    module.validation_step(batch, 0)
    assert logged[0] == logged[2] and logged[0][0] == "val_loss"
    assert isinstance(clone, DraemSevNetModule)
