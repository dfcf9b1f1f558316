"""Dinomaly and severity-aware Dinomaly: equal to anomalib's DinomalyModel where no variant is on, each variant doing
what it says, the LR schedule, the severity head, and trials with variants and severity rows (random init, tiny)."""

import pickle

import lightning as L
import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from hdmap.config import ConfigError, load_trial_config
from hdmap.models.dinomaly import (
    DinomalyConfig,
    DinomalyNet,
    HardNormalMiner,
    RowSegmentDropout,
    SevDinomalyConfig,
    SeverityHead,
    reconstruction_distance,
    warm_cosine,
)
from hdmap.trial import run_trial
from tests.conftest import DINO_TINY

TINY = dict(
    encoder="vit_small_patch14_reg4_dinov2",
    pretrained=False,
    target_layers=[0, 1],
    fuse_layers=[[0], [1]],
    decoder_depth=2,
    max_steps=4,
    val_every_steps=2,
    warmup_steps=1,
)


def _net(**fields) -> DinomalyNet:
    torch.manual_seed(0)
    return DinomalyNet(DinomalyConfig(**{**TINY, **fields}))


def _images(b=2, h=28, w=84):
    return torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(1))


def test_no_variant_equals_anomalib_dinomaly_model():
    """Features, anomaly map and training loss of anomalib's DinomalyModel with the same weights."""
    from anomalib.models.image.dinomaly.torch_model import DinomalyModel

    from hdmap.models.anomalib_adapter import offline_weights

    net = _net(bottleneck_dropout=0.0)
    with offline_weights(net.cfg):
        ref = DinomalyModel("vit_small_patch14_reg4_dinov2", 0.0, 2, [0, 1])
    ref.fuse_layer_encoder = ref.fuse_layer_decoder = [[0], [1]]
    missing, unexpected = ref.load_state_dict(net.model.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("encoder.feature_extractor.blocks.") for k in missing)  # unused blocks
    x = _images()
    net.eval(), ref.eval()
    with torch.no_grad():
        en, de, _ = net.encode_decode(x)
        ref_en, ref_de = ref.get_encoder_decoder_outputs(x)
        for a, b in zip(en + de, ref_en + ref_de):
            torch.testing.assert_close(a, b)
        torch.testing.assert_close(net.anomaly_map(en, de, (28, 84)), ref(x).anomaly_map)
    net.train(), ref.train()
    en, de, _ = net.encode_decode(x)
    loss, _ = net.loss(en, de, step=500)
    torch.testing.assert_close(loss, ref(x, global_step=500))
    torch.testing.assert_close(reconstruction_distance(en, de), loss)  # val_loss: the value hard mining leaves alone


def test_lr_schedule_is_anomalibs_warm_cosine():
    from anomalib.models.image.dinomaly.components import WarmCosineScheduler

    cfg = DinomalyConfig(**{**TINY, "max_steps": 50, "warmup_steps": 10, "val_every_steps": 10})
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    reference = WarmCosineScheduler(optimizer, cfg.lr, cfg.final_lr, cfg.max_steps, cfg.warmup_steps).schedule
    ours = [warm_cosine(cfg, s) * cfg.lr for s in range(cfg.max_steps + 3)]
    np.testing.assert_allclose(ours[: cfg.max_steps], reference, rtol=1e-6, atol=1e-12)
    assert ours[-1] == pytest.approx(cfg.final_lr)


@pytest.fixture(scope="module")
def variant_net():
    """One tiny net (with scale logits) for the variant tests; each test sets the config fields it exercises."""
    return _net(scale_weights=True)


@pytest.mark.parametrize("variant", ["topk", "gem", "scale_weights"])
def test_variant_losses(variant_net, variant):
    fields = {"topk": {"topk_q": 0.1, "topk_warmup_steps": 10}, "gem": {"gem_p": 3.0}, "scale_weights": {}}[variant]
    net = variant_net
    net.cfg = net.cfg.model_copy(update=fields)  # gem_p takes precedence over the (equal, 0.5 / 0.5) scale weights
    net.zero_grad()
    en, de, _ = net.encode_decode(_images())
    loss, distances = net.loss(en, de, step=20)
    maps = torch.stack([1 - torch.nn.functional.cosine_similarity(e, d, dim=1) for e, d in zip(en, de)], dim=1)
    if variant == "topk":  # after the warm-up: the mean of the top 10% of token distances (group mean)
        flat = maps.mean(dim=1).flatten()
        torch.testing.assert_close(loss, flat.topk(int(flat.numel() * 0.1)).values.mean() + 0.01 * flat.mean())
        q_one = net.loss(en, de, step=0)[0].item()  # q starts at 1: the plain mean
        assert q_one == pytest.approx(1.01 * flat.mean().item(), rel=1e-5)
    if variant == "gem":  # generalised mean over the fuse groups, loss = its mean (hard mining reweights gradients)
        torch.testing.assert_close(distances[:, 0], maps.pow(3).mean(dim=1).pow(1 / 3))
        torch.testing.assert_close(loss, distances.mean() * 1.01)
    if variant == "scale_weights":  # softmax weights, 0.5 / 0.5 at start, learned through the 0.01 auxiliary term
        torch.testing.assert_close(distances[:, 0], maps.mean(dim=1))
    net.cfg = net.cfg.model_copy(update={k: DinomalyConfig.model_fields[k].default for k in fields})
    loss.backward()
    learned = net.scale_logits.grad is not None and net.scale_logits.grad.abs().sum() > 0
    assert learned == (variant != "gem")  # GeM replaces the weights
    assert all(p.grad is None for p in net.model.encoder.parameters())  # the encoder stays frozen


def test_segment_dropout_zeroes_one_horizontal_run_per_picked_row():
    dropout = RowSegmentDropout(row_p=1.0, length=3, drop_p=1.0)
    x = torch.ones(2, 5 + 4 * 7, 8)  # 5 prefix tokens, 4 x 7 patch tokens
    out = dropout(x, (4, 7), prefix=5)
    assert torch.equal(out[:, :5], x[:, :5])
    kept = out[:, 5:, 0].reshape(2, 4, 7)
    for row in kept.reshape(-1, 7):
        zeros = (row == 0).nonzero().flatten().tolist()
        assert len(zeros) == 3 and zeros == list(range(zeros[0], zeros[0] + 3))  # one run of 3 neighbours
    assert torch.equal(dropout.eval()(x, (4, 7), prefix=5), x)  # training only
    assert torch.equal(RowSegmentDropout(0.0, 2, 0.6).train()(x, (4, 7), 5), x)  # off by default


def test_hard_normal_miner_marks_stable_hard_normals_after_warmup():
    miner = HardNormalMiner()
    index = torch.arange(100)
    for epoch in range(5):
        scores = torch.rand(100, generator=torch.Generator().manual_seed(epoch))
        scores[7] = 2.0  # always the hardest
        miner.observe(index, scores)
        miner.end_epoch()
        assert (miner.stable == {7}) == (epoch == 4)  # EMA 0.1, 0.19, 0.27, 0.34 (>= 0.3) but penalised from epoch 5
    assert miner.is_stable(torch.tensor([3, 7])).tolist() == [False, True]


@pytest.mark.parametrize("pooling", ["avg", "max", "attention"])
def test_severity_head(pooling):
    head = SeverityHead(32, [256, 64], 0.3, pooling)
    layers = [type(m).__name__ for m in head.mlp]
    assert layers == ["Linear", "ReLU", "Dropout", "Linear", "ReLU", "Linear"]  # the planned head
    out = head(torch.randn(5, 12, 32))  # raw: the loss sees it, the module reports it clamped at 0
    assert out.shape == (5,)
    (out - 10.0).pow(2).mean().backward()  # even far below a target, every parameter still learns
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())


def test_config_rules():
    with pytest.raises(ValueError, match="fuse_layers"):
        DinomalyConfig(**{**TINY, "fuse_layers": [[0], [2]]})
    with pytest.raises(ValueError, match="blocks 0..11"):
        DinomalyConfig(**{**TINY, "target_layers": [3, 12]})
    with pytest.raises(ValueError, match="choose one"):
        DinomalyConfig(**{**TINY, "gem_p": 3.0, "scale_weights": True})
    with pytest.raises(ValueError, match="warmup_steps"):
        DinomalyConfig(**{**TINY, "warmup_steps": 4})
    assert DinomalyConfig(encoder="vit_large_patch14_reg4_dinov2").resolved_target_layers()[-1] == 18
    assert DinomalyConfig(max_steps=1000, val_every_steps=200).max_epochs() == 5  # ASHA: one report per validation
    assert SevDinomalyConfig().outputs() == {"severity"} and DinomalyConfig().outputs() == set()
    with pytest.raises(ConfigError, match=r"data\.to_rgb=false does not suit model dinomaly"):
        load_trial_config(None, ["model.name=dinomaly", *DINO_TINY, "data.to_rgb=false"])
    pickle.loads(pickle.dumps(SevDinomalyConfig()))  # configs cross process boundaries (Ray)


class _ValLossReports(L.Callback):
    """What the sweep's ASHA reporter sees: val_loss at the end of each validation run."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def on_validation_epoch_end(self, trainer, module) -> None:
        self.values.append(float(trainer.callback_metrics["val_loss"]))


def test_severity_trial_with_every_compatible_variant(sim_root):
    """One sev_dinomaly trial (a Dinomaly subclass) with TopK, segment dropout, scale weights, hard-normal mining,
    a centre crop and attention pooling: val_loss at each validation, severity rows."""
    overrides = [f"data.root={sim_root}", "data.domain=C", *DINO_TINY, "model.max_steps=3", "model.batch_size=8"]
    overrides += ["model.name=sev_dinomaly", "model.severity_pooling=attention", "model.severity_head_widths=[16]"]
    overrides += ["model.topk_q=0.05", "model.segment_dropout_rows=0.5", "model.scale_weights=true"]
    overrides += ["model.hard_normal_weight=0.01", "data.image_size=[42,98]", "data.center_crop=[28,84]"]
    reports = _ValLossReports()
    result = run_trial(load_trial_config(None, overrides), callbacks=[reports])
    (row,) = result.rows
    assert row["status"] == "ok" and row["n_test"] == 80
    assert len(reports.values) == 3 and all(np.isfinite(reports.values))  # every val_every_steps (1) of 3 steps
    severity, score = result.scores["severity_pred"].to_numpy(), result.scores["score"].to_numpy()
    assert np.isfinite(score).all() and (severity >= 0).all()
    assert row["severity_mae"] is not None  # simulated faults carry a true severity
    # the score-vs-severity consistency needs no ground truth (undefined while a 3-step head predicts one value)
    expected = spearmanr(score, severity).statistic if np.ptp(severity) > 0 else None
    assert row["score_severity_spearman"] == (pytest.approx(expected) if expected is not None else None)


@pytest.mark.parametrize(
    "spec, trials, domain",
    [("dinomaly_ablation.yaml", 25, "all"), ("sev_dinomaly_ablation.yaml", 144, "domain_A")],
)
def test_ablation_specs_plan(spec, trials, domain):
    from sweeps.spec import load_spec

    plan = load_spec(f"sweeps/examples/{spec}")
    assert len(plan.trials) == trials and plan.spec.asha is None
    assert plan.trials[0].data.domain == domain  # the Dinomaly table: one multi-class model over all four domains
    first = plan.trials[0]
    assert first.data.model_input_size == (392, 392) and first.model.topk_q == 0  # baseline row first
