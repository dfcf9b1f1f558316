"""ca_patchcore: gating modes, row context (CPD), DINOv2 blocks, train-only gate calibration, faiss == dense."""

import shutil

import lightning as L
import numpy as np
import pytest
import tifffile
import torch

from hdmap.config import ConfigError, load_trial_config
from hdmap.models.backbones import WeightsNotFoundError
from hdmap.models.gating import p90, two_means_1d
from hdmap.models.knn import knn_search
from hdmap.models.patchcore_family import add_context, row_context
from hdmap.trial import run_trial
from tests.conftest import tiny_overrides


def ca_overrides(root, *extra):
    base = [o for o in tiny_overrides(root, "patchcore") if not o.startswith("model.coreset_ratio")]
    return base + ["model.name=ca_patchcore", "model.layers=[layer2,layer3]", "model.shots_per_bank=8", *extra]


class _Grab(L.Callback):
    """Keeps the fitted module so a test can look at its gate threshold and banks."""

    def on_train_end(self, trainer, pl_module):
        self.module = pl_module


@pytest.mark.parametrize("gating", ["mixed", "oracle", "p90", "random", "soft"])
def test_gating_modes_end_to_end(sim_root, gating):
    result = run_trial(load_trial_config(None, ca_overrides(sim_root, f"model.gating={gating}")))
    (row,) = result.rows
    assert row["status"] == "ok" and row["model"] == "ca_patchcore" and row["n_test"] == 80
    assert np.isfinite(result.scores["score"].to_numpy()).all()
    if gating == "mixed":
        assert row["gating_accuracy"] is None
    else:
        assert 0.0 <= row["gating_accuracy"] <= 1.0
        assert result.scores["gate"].null_count == 0
    if gating == "oracle":
        assert row["gating_accuracy"] == 1.0
    if gating in ("p90", "soft"):  # simulated cold/warm levels are well separated
        assert row["gating_accuracy"] > 0.85
    if gating != "random":
        assert row["image_auroc"] > 0.6


def test_context_with_gated_banks_end_to_end(sim_root):
    grab = _Grab()
    cfg = load_trial_config(None, ca_overrides(sim_root, "model.gating=p90", "model.context_k=[2,3]"))
    (row,) = run_trial(cfg, callbacks=[grab]).rows
    assert row["status"] == "ok" and row["gating_accuracy"] > 0.85
    # resnet18 layer2 (128) + layer3 (256) = 384 channels, x3 with two context blocks
    assert {bank.shape[1] for bank in grab.module.banks.values()} == {3 * 384}
    assert len(grab.module.banks) == 2


def test_dinov2_small_blocks_tiny_image(sim_root):
    grab = _Grab()
    cfg = load_trial_config(
        None,
        ca_overrides(
            sim_root,
            "model.backbone=vit_small_patch14_dinov2",
            "model.layers=[blocks.8,blocks.11]",
            "data.image_size=[28,84]",
            "model.gating=p90",
            "model.context_k=1",
            "model.shots_per_bank=2",
        ),
    )
    result = run_trial(cfg, callbacks=[grab])
    (row,) = result.rows
    assert row["status"] == "ok" and row["pretrained_weights"].startswith("random-init")
    assert np.isfinite(result.scores["score"].to_numpy()).all()
    # 28x84 / patch 14 -> 2x6 tokens per image, 2 blocks x 384 dims, x2 with one context block
    assert {tuple(bank.shape) for bank in grab.module.banks.values()} == {(2 * 2 * 6, 2 * 2 * 384)}


def test_dinov2_pretrained_without_local_weights_fails_precisely(sim_root, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch"))
    cfg = load_trial_config(
        None,
        [
            f"data.root={sim_root}",
            "model.name=ca_patchcore",
            "model.backbone=vit_small_patch14_dinov2",
            "model.pretrained=true",
        ],
    )
    with pytest.raises(WeightsNotFoundError) as err:
        run_trial(cfg)
    text = str(err.value)
    assert "'vit_small_patch14_dinov2'" in text and "empty-hf" in text and "model.weights=" in text


def test_dinov2_weights_from_local_file_fill_the_full_timm_model(tmp_path):
    import timm

    from hdmap.data.transforms import HdmapTransform
    from hdmap.models.patchcore_family import CAPatchCoreConfig, CAPatchCoreModule

    torch.manual_seed(3)
    reference = timm.create_model("vit_small_patch14_dinov2", pretrained=False)
    path = tmp_path / "vits14.pth"
    torch.save(reference.state_dict(), path)
    module = CAPatchCoreModule(CAPatchCoreConfig(weights=str(path)), HdmapTransform((28, 84)))
    key = "blocks.11.mlp.fc2.weight"
    assert torch.equal(module.extractor.feature_extractor.state_dict()[key], reference.state_dict()[key])


def test_p90_threshold_is_calibrated_on_train_only(sim_root, tmp_path):
    """Rewriting every test image leaves the gate threshold as it was; it is the train p90 2-means midpoint."""
    changed = tmp_path / "changed"
    shutil.copytree(sim_root, changed)
    for f in (changed / "domain_C" / "test").rglob("*.tiff"):
        tifffile.imwrite(f, (tifffile.imread(f) * 3.0 + 0.5).astype(np.float32))
    thresholds = []
    for root in (sim_root, changed):
        grab = _Grab()
        cfg = load_trial_config(None, ca_overrides(root, "model.gating=p90", "model.shots_per_bank=2"))
        (row,) = run_trial(cfg, callbacks=[grab]).rows
        assert row["status"] == "ok"
        thresholds.append(grab.module.threshold)
    assert thresholds[0] == thresholds[1]
    stats = grab.module.gate_stats
    assert stats["cold_centre"] < thresholds[0] < stats["warm_centre"]
    assert thresholds[0] == pytest.approx((stats["cold_centre"] + stats["warm_centre"]) / 2)
    assert stats["n_cold"] + stats["n_warm"] == 36  # the fit images (40 train minus 10% validation)


def test_explicit_gate_threshold_is_used(sim_root):
    grab = _Grab()
    cfg = load_trial_config(
        None, ca_overrides(sim_root, "model.gating=p90", "model.gate_threshold=1000.0", "model.shots_per_bank=null")
    )
    with pytest.raises(ValueError, match="no fit image in the warm bank"):
        run_trial(cfg, callbacks=[grab])


def test_mixed_with_all_fit_images_needs_no_gate(sim_root):
    """One fit image cannot calibrate a gate; the ungated baseline must not need one."""
    cfg = load_trial_config(
        None, ca_overrides(sim_root, "model.gating=mixed", "model.shots_per_bank=null", "data.train_shots=1")
    )
    (row,) = run_trial(cfg).rows
    assert row["status"] == "ok" and row["n_fit"] == 1 and row["gating_accuracy"] is None
    with pytest.raises(ValueError, match="gate_threshold"):
        run_trial(
            load_trial_config(
                None, ca_overrides(sim_root, "model.gating=p90", "model.shots_per_bank=null", "data.train_shots=1")
            )
        )


def test_two_means_midpoint():
    values = torch.tensor([0.20, 0.21, 0.19, 0.22, 0.40, 0.41, 0.39])
    low, high = two_means_1d(values)
    assert low == pytest.approx(0.205) and high == pytest.approx(0.40)
    with pytest.raises(ValueError, match="gate_threshold"):
        two_means_1d(torch.tensor([0.3]))
    raw = torch.arange(31 * 95, dtype=torch.float32).reshape(1, 31, 95)
    assert p90(raw).item() == pytest.approx(torch.quantile(raw.flatten(), 0.9).item())
    assert p90(raw).item() == p90(raw.numpy()).item()  # one rule for tensors (the trial) and arrays (sweep plan)


def test_faiss_scores_equal_dense_torch():
    torch.manual_seed(0)
    bank, queries = torch.randn(3000, 384), torch.randn(6 * 500, 384) * 1.3
    (fast, fast_i), (dense, dense_i) = knn_search(queries, bank, 4, "faiss"), knn_search(queries, bank, 4, "torch")
    torch.testing.assert_close(fast, dense, atol=1e-4, rtol=0)
    assert (fast_i == dense_i).float().mean() > 0.999  # indices agree except on float near-ties
    assert torch.all(fast[:, 1:] >= fast[:, :-1])  # nearest first
    image_fast = fast[:, 0].reshape(6, 500).max(dim=1).values
    image_dense = torch.cdist(queries.reshape(6, 500, 384), bank.expand(6, -1, -1)).min(dim=2).values.max(dim=1).values
    torch.testing.assert_close(image_fast, image_dense, atol=1e-4, rtol=0)


def test_ivf_is_exact_when_every_cell_is_probed_and_approximate_otherwise():
    torch.manual_seed(0)
    bank, queries = torch.randn(4000, 64), torch.randn(500, 64)
    exact_d, exact_i = knn_search(queries, bank, 1, "faiss")
    all_d, all_i = knn_search(queries, bank, 1, "faiss_ivf", nprobe=10_000)  # every cell = exact
    torch.testing.assert_close(all_d, exact_d, atol=1e-4, rtol=0)
    one_d, one_i = knn_search(queries, bank, 1, "faiss_ivf", nprobe=1)
    recall = (one_i == exact_i).float().mean().item()
    assert 0.05 < recall < 1.0 and torch.all(one_d >= exact_d - 1e-4)  # approximate: never closer than exact


def test_k_reweighting_matches_anomalib_patchcore(sim_root):
    """ca_patchcore gating=mixed is PatchCore: same features, bank and anomalib's image-score reweighting."""
    common = [o for o in tiny_overrides(sim_root, "patchcore") if not o.startswith("model.coreset")]
    common += ["model.coreset_ratio=1.0", "data.train_shots=10", "model.k=9"]
    ours = run_trial(load_trial_config(None, common + ["model.name=ca_patchcore", "model.layers=[layer2,layer3]"]))
    anomalib = run_trial(load_trial_config(None, common))  # anomalib's PatchcoreModel (default layers layer2+3)
    np.testing.assert_allclose(ours.scores["score"].to_numpy(), anomalib.scores["score"].to_numpy(), atol=1e-4, rtol=0)
    k1 = run_trial(
        load_trial_config(None, common + ["model.name=ca_patchcore", "model.layers=[layer2,layer3]", "model.k=1"])
    )
    assert not np.allclose(k1.scores["score"].to_numpy(), ours.scores["score"].to_numpy())  # k is not ignored


def test_faiss_trial_equals_dense_trial(sim_root):
    scores = {}
    for knn in ("faiss", "torch"):
        cfg = load_trial_config(
            None, ca_overrides(sim_root, "model.gating=p90", f"model.knn={knn}", "model.shots_per_bank=4")
        )
        scores[knn] = run_trial(cfg).scores["score"].to_numpy()
    np.testing.assert_allclose(scores["faiss"], scores["torch"], atol=1e-4, rtol=0)


def test_row_context_shapes_and_values():
    f = torch.arange(2 * 3 * 2 * 5, dtype=torch.float32).reshape(2, 3, 2, 5)
    out = add_context(f, [1, 2])
    assert out.shape == (2, 9, 2, 5) and torch.equal(out[:, :3], f)
    mean1 = row_context(f, 1)
    torch.testing.assert_close(mean1[..., 2], f[..., 1:4].mean(-1))  # interior: j-1..j+1
    torch.testing.assert_close(mean1[..., 0], f[..., 0:2].mean(-1))  # edge: truncated window
    torch.testing.assert_close(out[:, 6:, :, 4], f[..., 2:5].mean(-1))  # k=2 at the right edge
    excl = row_context(f, 1, include_self=False)
    torch.testing.assert_close(excl[..., 2], (f[..., 1] + f[..., 3]) / 2)
    torch.testing.assert_close(excl[..., 0], f[..., 1])
    mx = row_context(-f, 2, agg="max")
    torch.testing.assert_close(mx[..., 3], (-f[..., 1:5]).max(-1).values)
    # context only mixes along the row (W): rows never leak into each other
    g = torch.zeros(1, 1, 2, 5)
    g[0, 0, 0] = 1.0
    assert row_context(g, 3)[0, 0, 1].abs().sum() == 0


def test_context_config_validation(sim_root):
    for bad in ("model.context_k=[]", "model.context_k=-1", "model.context_k=[2,2]", "model.context_k=[0,2]"):
        with pytest.raises(ConfigError, match="context_k"):
            load_trial_config(None, ca_overrides(sim_root, bad))
    cfg = load_trial_config(None, ca_overrides(sim_root, "model.context_k=[2,3]"))
    assert cfg.model.context_ks() == [2, 3]
    assert load_trial_config(None, ca_overrides(sim_root, "model.context_k=0")).model.context_ks() == []  # no context


def test_cpd_patchcore_is_ca_patchcore_with_context_on(sim_root):
    cpd = run_trial(load_trial_config(None, ca_overrides(sim_root, "model.name=cpd_patchcore", "model.gating=p90")))
    ca = run_trial(load_trial_config(None, ca_overrides(sim_root, "model.gating=p90", "model.context_k=[2,3]")))
    assert cpd.rows[0]["model"] == "cpd_patchcore" and cpd.rows[0]["model.context_k"] == [2, 3]
    np.testing.assert_array_equal(cpd.scores["score"].to_numpy(), ca.scores["score"].to_numpy())
    with pytest.raises(ConfigError, match="needs row context"):
        load_trial_config(None, ca_overrides(sim_root, "model.name=cpd_patchcore", "model.context_k=0"))


def test_dinov2_defaults_to_518_bilinear_and_explicit_sizes_win():
    cfg = load_trial_config(None, ["model.name=ca_patchcore", "model.backbone=vit_base_patch14_dinov2"])
    assert cfg.data.image_size == (518, 518) and cfg.data.resize == "bilinear"
    assert load_trial_config(None, ["model.name=ca_patchcore", "data.image_size=224"]).data.image_size == (224, 224)
    assert load_trial_config(None, ["model.name=patchcore", "model.backbone=resnet18"]).data.image_size == (224, 224)
    resolved = load_trial_config(None, ["model.name=cpd_patchcore"])
    assert load_trial_config(None, ["model.name=cpd_patchcore", "data.image_size=518"]).trial_id == resolved.trial_id
