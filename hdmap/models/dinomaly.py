"""Dinomaly (anomalib 2.7's `DinomalyModel`) with the researcher's variants, and severity-aware Dinomaly.

Its own module rather than the generic adapter (`hdmap.models.anomalib_adapter`): the variants change the torch
model's loss, bottleneck and map aggregation, `sev_dinomaly` needs the bottleneck tokens, anomalib's Lightning
`Dinomaly` hands Lightning a bare scheduler list (stepped per *epoch*, where Dinomaly's schedule is per step), and
`DinomalyModel` never sets `fuse_layer_*` when they are given (AttributeError). The network is `DinomalyModel` itself
(frozen DINOv2-reg encoder, bottleneck MLP, linear-attention decoder, anomalib's hard-mining loss and blur); here:

- weights: `DinomalyModel.__init__` asks timm for pretrained weights (`pre_trained=True` hard-coded). It is built
  inside the adapter's `offline_weights` (timm's `pretrained` forced off: no download), then the encoder is loaded
  by `hdmap.models.backbones.load_pretrained` from `model.weights` or the HF cache, or the trial fails with
  `WeightsNotFoundError` before any fit. `pretrained: false` keeps the random init (tests), and the row says so.
- scoring at the model's resolution: the map is computed at the input size (the transform's crop: Dinomaly's
  448 -> 392 is `data.image_size: 448, data.center_crop: 392`), blurred like anomalib's (sigma 4), and the score is
  the mean of its top `score_top_fraction`. anomalib first resizes the map to 256 x 256, which distorts the
  non-square inputs HDMAP's 31 x 95 arrays invite.
- training by steps: StableAdamW, linear warm-up then cosine decay per step (anomalib's schedule), `max_steps`,
  gradient clipping; `val_loss` every `val_every_steps` steps on validation normals (one ASHA report each). It is
  anomalib's loss value (cosine distance of the flattened encoder vs decoder features, mean over fuse groups) in eval
  mode, identical for every variant, so ASHA compares variants on one measure (variants that train on another loss
  are not favoured by it, nor is it a detection metric).
- nothing depends on the domain: a model trained on the pooled normals of several domains is the same model.

Variants (the researcher's multi-class Dinomaly runs: docs/research-facts.md#dinomaly), each off by default (0 / false:
a value, not null, so a sweep report pairs each variant with the baseline):
- `topk_q`: the loss is the mean of the top q of the token distance map (mean over fuse groups), q going linearly
  from 1 to `topk_q` over `topk_warmup_steps`; replaces the hard-mining loss.
- `gem_p`: fuse groups combined by a generalised mean (p) instead of the mean, in the anomaly map and in the loss
  (hard mining then acts on the GeM map; the researcher ran it with `mining_factor: 0.3`).
- `segment_dropout_rows` ("cfg F" with `segment_length` 2, `segment_drop_p` 0.6, `bottleneck_dropout` 0.1): on the
  bottleneck input, each row of patch tokens is picked with that probability and a run of `segment_length`
  neighbouring tokens in it is zeroed (each with `segment_drop_p`), training only, no rescaling (their choice).
- `scale_weights`: fuse groups combined by softmax weights (learned at 10x lr; an auxiliary 0.01 x mean distance
  gives them a gradient), in the map and in the loss's auxiliary term.
- `hard_normal_weight`: stable hard-normal mining: per image, the mean of the top 5% of its training distance map;
  each epoch the top 1% of fit images are hard, an EMA (0.9) of that counts, images at >= 0.3 are stable hard
  normals and from epoch 5 on `hard_normal_weight` x their mean score is added to the loss.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn
from torch.nn import functional as F

from hdmap.data.faults import HorizontalLineFaults
from hdmap.errors import WeightsNotFoundError
from hdmap.models.backbones import load_pretrained
from hdmap.models.base import AnomalyModule, SeededFaults
from hdmap.models.configs.dinomaly import DinomalyConfig, SevDinomalyConfig

_SCALE_AUX_WEIGHT = 0.01  # the researcher's auxiliary weight and lr multiplier for learnable scale weights
_SCALE_LR_FACTOR = 10.0
_HARD_TOP, _HARD_EMA, _HARD_STABLE, _HARD_WARMUP_EPOCHS, _HARD_SCORE_TOP = 0.01, 0.9, 0.3, 5, 0.05
_VAL_SEED = 10_000


# --------------------------------------------------------------------------- network


class RowSegmentDropout(nn.Module):
    """Horizontal segment dropout on patch tokens (B, prefix + h*w, D); prefix tokens pass; training only."""

    def __init__(self, row_p: float, length: int, drop_p: float) -> None:
        super().__init__()
        self.row_p, self.length, self.drop_p = row_p, length, drop_p

    def forward(self, x: torch.Tensor, grid: tuple[int, int], prefix: int) -> torch.Tensor:
        if not self.training or self.row_p == 0 or self.drop_p == 0:
            return x
        (h, w), b, device = grid, x.shape[0], x.device
        length = min(self.length, w)
        rows = torch.rand(b, h, 1, device=device) < self.row_p
        start = torch.randint(0, w - length + 1, (b, h, 1), device=device)
        cols = torch.arange(w, device=device)
        drop = rows & (cols >= start) & (cols < start + length) & (torch.rand(b, h, w, device=device) < self.drop_p)
        keep = (~drop).to(x.dtype).view(b, h * w, 1)
        return torch.cat([x[:, :prefix], x[:, prefix:] * keep], dim=1)


class SeverityHead(nn.Module):
    """Pooled patch tokens -> Linear/ReLU per width (dropout after the first) -> Linear 1: the raw severity.

    The reported severity is the raw one clamped at 0 (non-negative, as planned); the loss sees the raw value. A final
    ReLU or softplus inside the head stops learning once its input is far negative, and with ~70% zero targets it
    gets there fast: softplus put every image at ~1e-9 within 20 steps of a reduced run."""

    def __init__(self, dim: int, widths: list[int], dropout: float, pooling: str) -> None:
        super().__init__()
        self.pooling = pooling
        self.attention = nn.Linear(dim, 1) if pooling == "attention" else None
        layers: list[nn.Module] = []
        c = dim
        for i, width in enumerate(widths):
            layers += [nn.Linear(c, width), nn.ReLU(inplace=True)] + ([nn.Dropout(dropout)] if i == 0 else [])
            c = width
        self.mlp = nn.Sequential(*layers, nn.Linear(c, 1))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.pooling == "avg":
            pooled = tokens.mean(dim=1)
        elif self.pooling == "max":
            pooled = tokens.amax(dim=1)
        else:
            pooled = (torch.softmax(self.attention(tokens), dim=1) * tokens).sum(dim=1)
        return self.mlp(pooled).squeeze(1)


class DinomalyNet(nn.Module):
    """anomalib's DinomalyModel (built without downloads, encoder frozen) plus the variants' parts."""

    def __init__(self, cfg: DinomalyConfig) -> None:
        super().__init__()
        from anomalib.models.image.dinomaly.components import CosineHardMiningLoss
        from anomalib.models.image.dinomaly.lightning_model import Dinomaly
        from anomalib.models.image.dinomaly.torch_model import DinomalyModel

        from hdmap.models.anomalib_adapter import offline_weights

        self.cfg = cfg
        with offline_weights(cfg):
            model = DinomalyModel(
                encoder_name=cfg.encoder,
                bottleneck_dropout=cfg.bottleneck_dropout,
                decoder_depth=cfg.decoder_depth,
                target_layers=cfg.resolved_target_layers(),
            )
        model.fuse_layer_encoder = model.fuse_layer_decoder = cfg.fuse_layers  # anomalib drops them when given
        model.loss_fn = CosineHardMiningLoss(cfg.mining_final, cfg.mining_steps, cfg.mining_factor)
        if cfg.pretrained:
            try:
                load_pretrained(model.encoder.feature_extractor, cfg.encoder, cfg.weights)
            except WeightsNotFoundError as exc:
                raise WeightsNotFoundError(f"model {cfg.name!r}: {exc}") from None
        vit = model.encoder.feature_extractor
        vit.blocks = vit.blocks[: max(model.target_layers) + 1]  # timm runs every block otherwise; later ones unused
        for param in model.encoder.parameters():
            param.requires_grad = False
        Dinomaly._initialize_trainable_modules(nn.ModuleList([model.bottleneck, model.decoder]))
        self.model = model.float()
        self.segment_dropout = RowSegmentDropout(cfg.segment_dropout_rows, cfg.segment_length, cfg.segment_drop_p)
        groups = len(cfg.fuse_layers)
        self.scale_logits = nn.Parameter(torch.zeros(groups)) if cfg.scale_weights else None

    @property
    def prefix_tokens(self) -> int:
        return 1 + self.model.encoder.num_register_tokens

    def encode_decode(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """-> (encoder maps, decoder maps) per fuse group, each (B, D, h, w), and the bottleneck tokens (B, N, D).

        DinomalyModel.get_encoder_decoder_outputs with its defaults (class token kept, no recentering), plus segment
        dropout on the bottleneck input and the bottleneck output returned (the severity head reads it)."""
        m = self.model
        grid = (images.shape[-2] // m.encoder.patch_size, images.shape[-1] // m.encoder.patch_size)
        features = m.encoder(images)
        encoder_features = [features[f"blocks.{i}"] for i in m.target_layers]
        x = self.segment_dropout(m._fuse_feature(encoder_features), grid, self.prefix_tokens)
        for block in m.bottleneck:
            x = block(x)
        bottleneck = x
        decoder_features = []
        for block in m.decoder:
            x = block(x, attn_mask=None)
            decoder_features.append(x)
        decoder_features = decoder_features[::-1]
        en = [m._fuse_feature([encoder_features[i] for i in idxs]) for idxs in m.fuse_layer_encoder]
        de = [m._fuse_feature([decoder_features[i] for i in idxs]) for idxs in m.fuse_layer_decoder]
        return (
            m._process_features_for_spatial_output(en, *grid),
            m._process_features_for_spatial_output(de, *grid),
            bottleneck,
        )

    def combine(self, maps: torch.Tensor) -> torch.Tensor:
        """(B, groups, H, W) distance maps -> (B, 1, H, W): mean, GeM or learned weights over the fuse groups."""
        if self.cfg.gem_p:
            p = self.cfg.gem_p
            return maps.clamp(min=1e-6).pow(p).mean(dim=1, keepdim=True).pow(1.0 / p)
        if self.scale_logits is not None:
            weights = torch.softmax(self.scale_logits, dim=0).view(1, -1, 1, 1)
            return (maps * weights).sum(dim=1, keepdim=True)
        return maps.mean(dim=1, keepdim=True)

    def anomaly_map(self, en: list[torch.Tensor], de: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """(B, 1, H, W) at the model's input size (anomalib's per-group cosine maps, upsampled, then combined)."""
        _, per_group = self.model.calculate_anomaly_maps(en, de, out_size=tuple(size))
        return self.combine(torch.cat(per_group, dim=1))

    def image_score(self, anomaly_map: torch.Tensor) -> torch.Tensor:
        """anomalib's score at the map's own size: blur, then the mean of the top `score_top_fraction` of pixels."""
        flat = self.model.gaussian_blur(anomaly_map).flatten(1)
        k = max(1, int(flat.shape[1] * self.cfg.score_top_fraction))
        return flat.topk(k, dim=1).values.mean(dim=1)

    def token_distances(self, en: list[torch.Tensor], de: list[torch.Tensor]) -> torch.Tensor:
        """(B, 1, h, w) combined cosine distance per token (encoder side detached): the variants' training signal."""
        maps = [1 - F.cosine_similarity(e.detach(), d, dim=1) for e, d in zip(en, de)]
        return self.combine(torch.stack(maps, dim=1))

    def loss(self, en: list[torch.Tensor], de: list[torch.Tensor], step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (training loss, the token distance map (B, 1, h, w) it saw)."""
        cfg = self.cfg
        distances = self.token_distances(en, de)
        if cfg.topk_q:
            fall = min(1.0, step / cfg.topk_warmup_steps) if cfg.topk_warmup_steps else 1.0
            q = 1.0 - (1.0 - cfg.topk_q) * fall
            flat = distances.flatten()
            loss = flat.topk(max(1, int(flat.numel() * q))).values.mean()
        elif cfg.gem_p:
            loss = _hard_mined_mean(distances, self.model.loss_fn, step)
        else:
            loss = self.model.loss_fn(encoder_features=en, decoder_features=de, global_step=step)
        if self.scale_logits is not None:
            loss = loss + _SCALE_AUX_WEIGHT * distances.mean()
        return loss, distances


def _hard_mined_mean(distances: torch.Tensor, mining, step: int) -> torch.Tensor:
    """anomalib's hard mining on one combined map: the share `p` (scheduled) of easiest points gets `factor` of its
    gradient; the loss is the map's mean (the researcher's GeM loss)."""
    from anomalib.models.image.dinomaly.components import CosineHardMiningLoss

    mining._update_p_schedule(step)
    flat = distances.detach().flatten()
    threshold = flat.topk(max(1, int(flat.numel() * (1 - mining.p)))).values[-1]
    if distances.requires_grad:
        easy = distances.detach() < threshold
        distances.register_hook(
            partial(CosineHardMiningLoss._modify_grad, indices_to_modify=easy, gradient_multiply_factor=mining.factor)
        )
    return distances.mean()


def reconstruction_distance(en: list[torch.Tensor], de: list[torch.Tensor]) -> torch.Tensor:
    """anomalib's Dinomaly loss *value* (hard mining only reweights gradients): 1 - cosine of the flattened encoder
    and decoder features per image, mean over images and fuse groups. The val_loss of every variant."""
    per_group = [1 - F.cosine_similarity(e.flatten(1), d.flatten(1)).mean() for e, d in zip(en, de)]
    return torch.stack(per_group).mean()


class HardNormalMiner:
    """Stable hard normals (the researcher's method 3): fit images repeatedly among the top 1% of training scores."""

    def __init__(self) -> None:
        self.frequency: dict[int, float] = {}
        self.scores: dict[int, float] = {}
        self.stable: set[int] = set()
        self.epochs = 0

    def observe(self, indices: torch.Tensor, scores: torch.Tensor) -> None:
        self.scores.update(zip(indices.tolist(), scores.detach().float().tolist()))

    def end_epoch(self) -> None:
        if not self.scores:
            return
        ranked = sorted(self.scores, key=self.scores.get, reverse=True)
        hard = set(ranked[: max(1, int(len(ranked) * _HARD_TOP))])
        for i in self.scores:
            self.frequency[i] = _HARD_EMA * self.frequency.get(i, 0.0) + (1 - _HARD_EMA) * (i in hard)
        self.epochs += 1
        if self.epochs >= _HARD_WARMUP_EPOCHS:
            self.stable = {i for i, f in self.frequency.items() if f >= _HARD_STABLE}
        self.scores = {}

    def is_stable(self, indices: torch.Tensor) -> torch.Tensor:
        return torch.tensor([i in self.stable for i in indices.tolist()], dtype=torch.bool, device=indices.device)


# --------------------------------------------------------------------------- Lightning modules


class DinomalyModule(AnomalyModule):
    uses_validation = True
    max_epochs = -1  # training length is max_steps

    def __init__(self, cfg: DinomalyConfig, transform: nn.Module, seed: int = 0) -> None:
        super().__init__(transform)
        self.cfg = cfg
        self.seed = seed
        self.net = DinomalyNet(cfg)
        self.hard_normals = HardNormalMiner() if cfg.hard_normal_weight > 0 else None

    def trainer_kwargs(self) -> dict:
        cfg = self.cfg
        return {
            "max_steps": cfg.max_steps,
            "gradient_clip_val": cfg.gradient_clip_val or None,
            "val_check_interval": cfg.val_every_steps,
            "check_val_every_n_epoch": None,  # val_check_interval counts steps across epochs
        }

    def configure_optimizers(self):
        from anomalib.models.image.dinomaly.components import StableAdamW

        cfg, logits = self.cfg, self.net.scale_logits
        groups = [{"params": [p for p in self.parameters() if p.requires_grad and p is not logits]}]
        if logits is not None:
            groups.append({"params": [logits], "lr": cfg.lr * _SCALE_LR_FACTOR})
        optimizer = StableAdamW(
            groups, lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay, amsgrad=True, eps=1e-8
        )
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(warm_cosine, cfg))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def dinomaly_loss(self, en: list[torch.Tensor], de: list[torch.Tensor], index: torch.Tensor) -> torch.Tensor:
        """Dinomaly's loss with the variants (hard-normal mining needs the images' `index` in the fit set)."""
        loss, distances = self.net.loss(en, de, self.global_step)
        if self.hard_normals is not None:
            flat = distances.flatten(1)
            scores = flat.topk(max(1, int(flat.shape[1] * _HARD_SCORE_TOP)), dim=1).values.mean(dim=1)
            self.hard_normals.observe(index, scores)
            stable = self.hard_normals.is_stable(index)
            if stable.any():
                loss = loss + self.cfg.hard_normal_weight * scores[stable].mean()
        return loss

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        en, de, _ = self.net.encode_decode(batch["image"])
        loss = self.dinomaly_loss(en, de, batch["index"])
        self.log("train_loss", loss, on_epoch=True, on_step=False, batch_size=len(batch["image"]))
        return loss

    def on_train_epoch_end(self) -> None:
        if self.hard_normals is not None:
            self.hard_normals.end_epoch()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        with torch.no_grad():
            en, de, _ = self.net.encode_decode(batch["image"])
        self.log("val_loss", reconstruction_distance(en, de), on_epoch=True, batch_size=len(batch["image"]))

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        images = batch["image"]
        en, de, _ = self.net.encode_decode(images)
        return {"score": self.net.image_score(self.net.anomaly_map(en, de, images.shape[-2:]))}

    def score(self, images: torch.Tensor) -> torch.Tensor:
        return self.predict_step({"image": images}, 0)["score"]


def warm_cosine(cfg: DinomalyConfig, step: int) -> float:
    """LR multiplier at `step` (LambdaLR, so the scale weights keep their 10x): anomalib's WarmCosineScheduler,
    linear from 0 to lr over warmup_steps, cosine from lr to final_lr at max_steps, final_lr after."""
    if step < cfg.warmup_steps:
        return step / max(1, cfg.warmup_steps - 1)
    if step >= cfg.max_steps:
        return cfg.final_lr / cfg.lr
    progress = (step - cfg.warmup_steps) / (cfg.max_steps - cfg.warmup_steps)
    return (cfg.final_lr + 0.5 * (cfg.lr - cfg.final_lr) * (1 + math.cos(math.pi * progress))) / cfg.lr


class SevDinomalyModule(SeededFaults, DinomalyModule):
    """Multi-task: Dinomaly's loss on the batch's clean images (a decoder taught to reconstruct the synthetic faults
    would stop flagging them) + severity_weight x MSE of the head's severity on every image (clean ones: 0).
    Faults are added to the raw arrays, before the one transform, so they are resized like real faults."""

    def __init__(self, cfg: SevDinomalyConfig, transform: nn.Module, seed: int = 0) -> None:
        super().__init__(cfg, transform, seed)
        dim = self.net.model.encoder.out_dims[0]
        self.severity_head = SeverityHead(dim, cfg.severity_head_widths, cfg.severity_dropout, cfg.severity_pooling)
        self.faults = HorizontalLineFaults(cfg.aug_ratio, cfg.severity_max)
        self.val_faults = HorizontalLineFaults(0.5, cfg.severity_max)  # fixed protocol: val_severity_mae comparable

    def _severity(self, tokens: torch.Tensor) -> torch.Tensor:
        """The head's raw severity from the bottleneck's patch tokens (clamp at 0 for the reported value)."""
        return self.severity_head(tokens[:, self.net.prefix_tokens :])

    def _faulted(self, batch: dict, faults: HorizontalLineFaults, generator: torch.Generator):
        fb = faults(batch["raw"], generator)
        clean = torch.tensor([not boxes for boxes in fb.boxes], device=fb.image.device)
        return self.transform(fb.image), fb.severity, clean

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        images, severity, clean = self._faulted(batch, self.faults, self.fault_generator)
        en, de, tokens = self.net.encode_decode(images)
        loss = self.dinomaly_loss([e[clean] for e in en], [d[clean] for d in de], batch["index"][clean])
        severity_loss = F.mse_loss(self._severity(tokens), severity)
        loss = loss + self.cfg.severity_weight * severity_loss
        n = len(images)
        self.log("train_loss", loss, on_epoch=True, on_step=False, batch_size=n)
        self.log("train_severity_mse", severity_loss, on_epoch=True, on_step=False, batch_size=n)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)
        generator = torch.Generator().manual_seed(_VAL_SEED + batch_idx)
        with torch.no_grad():
            images, severity, _ = self._faulted(batch, self.val_faults, generator)
            _, _, tokens = self.net.encode_decode(images)
            error = (self._severity(tokens).clamp(min=0) - severity).abs().mean()
        self.log("val_severity_mae", error, on_epoch=True, batch_size=len(images))

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        images = batch["image"]
        en, de, tokens = self.net.encode_decode(images)
        score = self.net.image_score(self.net.anomaly_map(en, de, images.shape[-2:]))
        return {"score": score, "severity": self._severity(tokens).clamp(min=0)}


def build(cfg: DinomalyConfig, transform: nn.Module, seed: int = 0) -> DinomalyModule:
    module = SevDinomalyModule if isinstance(cfg, SevDinomalyConfig) else DinomalyModule
    return module(cfg, transform, seed)
