"""`dinomaly` and `sev_dinomaly`: the fields of Dinomaly and its variants (module and the variants' story:
hdmap.models.dinomaly)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from hdmap.models.configs.backbones import pretrained_label
from hdmap.models.configs.base import ModelConfig

ENCODERS = ("vit_small_patch14_reg4_dinov2", "vit_base_patch14_reg4_dinov2", "vit_large_patch14_reg4_dinov2")
_DEPTH = {"small": 12, "base": 12, "large": 24}
_PATCH = 14


class DinomalyConfig(ModelConfig):
    """`dinomaly`: anomalib's DinomalyModel trained by steps, with the researcher's variants (all off by default)."""

    per_epoch_metric: ClassVar[str | None] = "val_loss"  # one report per validation (every val_every_steps)
    needs_pretrained_weights: ClassVar[bool] = True

    name: Literal["dinomaly"] = "dinomaly"
    batch_size: int = Field(16, ge=1)
    encoder: Literal[ENCODERS] = "vit_base_patch14_reg4_dinov2"  # type: ignore[valid-type]
    pretrained: bool = True
    weights: str | None = Field(None, description="local checkpoint of the encoder; default: the HF cache")
    target_layers: list[int] | None = Field(
        None, description="encoder blocks read; None: [2..9] (small, base) or [4, 6, ..., 18] (large)"
    )
    fuse_layers: list[list[int]] = Field(
        [[0, 1, 2, 3], [4, 5, 6, 7]], description="groups of target layers (and decoder layers) fused per scale"
    )
    bottleneck_dropout: float = Field(0.2, ge=0, lt=1)
    decoder_depth: int = Field(8, ge=2)
    max_steps: int = Field(1000, ge=1)
    val_every_steps: int = Field(200, ge=1, description="steps between val_loss evaluations (ASHA reports)")
    lr: float = Field(2e-3, gt=0, description="StableAdamW peak lr, reached after the warm-up")
    final_lr: float = Field(2e-4, ge=0, description="lr at max_steps (cosine decay)")
    weight_decay: float = Field(1e-4, ge=0)
    warmup_steps: int = Field(100, ge=0)
    gradient_clip_val: float = Field(0.1, ge=0)
    mining_final: float = Field(0.9, ge=0, lt=1, description="share of easy points down-weighted in the end")
    mining_steps: int = Field(1000, ge=1, description="steps over which that share grows from 0")
    mining_factor: float = Field(0.1, ge=0, le=1, description="gradient factor of the easy points")
    score_top_fraction: float = Field(0.01, gt=0, le=1, description="image score = mean of this top share of the map")
    topk_q: float = Field(0.0, ge=0, le=1, description="TopK loss: mean of this top share of the distances; 0 = off")
    topk_warmup_steps: int = Field(200, ge=0, description="steps over which the TopK share falls from 1 to topk_q")
    gem_p: float = Field(0.0, ge=0, description="GeM power over the fuse groups (map and loss); 0 = off (mean)")
    segment_dropout_rows: float = Field(0.0, ge=0, le=1, description="horizontal segment dropout: row probability")
    segment_length: int = Field(2, ge=1, description="tokens per dropped horizontal segment")
    segment_drop_p: float = Field(0.6, ge=0, le=1, description="drop probability of each token of a segment")
    scale_weights: bool = Field(False, description="learnable softmax weights of the fuse groups")
    hard_normal_weight: float = Field(0.0, ge=0, description="stable hard-normal mining penalty weight; 0 = off")

    def resolved_target_layers(self) -> list[int]:
        if self.target_layers is not None:
            return self.target_layers
        return [4, 6, 8, 10, 12, 14, 16, 18] if "large" in self.encoder else [2, 3, 4, 5, 6, 7, 8, 9]

    @model_validator(mode="after")
    def _consistent(self) -> DinomalyConfig:
        depth = _DEPTH[self.encoder.split("_")[1]]
        layers = self.resolved_target_layers()
        if not layers or any(not 0 <= i < depth for i in layers):
            raise ValueError(f"target_layers {layers}: {self.encoder} has blocks 0..{depth - 1}")
        groups = min(len(layers), self.decoder_depth)
        if not self.fuse_layers or any(not g or any(not 0 <= i < groups for i in g) for g in self.fuse_layers):
            raise ValueError(
                f"fuse_layers {self.fuse_layers}: non-empty groups of indices 0..{groups - 1} "
                f"(positions in target_layers and in the {self.decoder_depth} decoder layers)"
            )
        if self.max_steps <= self.warmup_steps:
            raise ValueError(f"warmup_steps {self.warmup_steps} must be < max_steps {self.max_steps}")
        if self.val_every_steps > self.max_steps:
            raise ValueError(f"val_every_steps {self.val_every_steps} > max_steps {self.max_steps}: no val_loss")
        if self.gem_p and self.scale_weights:
            raise ValueError("gem_p and scale_weights both combine the fuse groups: choose one")
        return self

    def input_size_problem(self, size: tuple[int, int]) -> str | None:
        if any(side % _PATCH for side in size):
            return f"DINOv2 reads {_PATCH} px patches: each side a multiple of {_PATCH} (e.g. 392), got {list(size)}"
        return None

    def data_requirements(self) -> dict:
        return {"to_rgb": (True, "its DINOv2 encoder takes 3-channel images")}

    def max_epochs(self) -> int:
        """ASHA's max_t: validation rounds (reports), not epochs."""
        return self.max_steps // self.val_every_steps

    def weights_label(self) -> str | None:
        return pretrained_label(self.pretrained, self.weights)


class SevDinomalyConfig(DinomalyConfig):
    """`sev_dinomaly`: Dinomaly + a severity head on the pooled bottleneck tokens, trained on horizontal-line faults."""

    name: Literal["sev_dinomaly"] = "sev_dinomaly"  # type: ignore[assignment]
    batch_size: int = Field(16, ge=2, description="a batch keeps >= 1 clean image for the reconstruction loss")
    severity_weight: float = Field(0.1, ge=0, description="loss = Dinomaly loss + this x severity MSE")
    aug_ratio: float = Field(0.3, gt=0, lt=1, description="share of each batch that gets horizontal-line faults")
    severity_max: float = Field(0.5, gt=0, description="severity ~ U[0, this]: peak added value, raw HDMAP units")
    severity_head_widths: list[int] = Field([256, 64], min_length=1, description="hidden widths of the head's MLP")
    severity_dropout: float = Field(0.3, ge=0, lt=1, description="dropout after the head's first hidden layer")
    severity_pooling: Literal["avg", "max", "attention"] = "avg"

    def outputs(self) -> frozenset[str]:
        return frozenset({"severity"})
