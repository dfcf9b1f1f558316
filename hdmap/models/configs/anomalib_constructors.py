"""The constructor arguments of the adapted anomalib 2.7 models (anomalib is pinned), as config fields: read once from
anomalib's signatures and written here, so a config class needs no anomalib import (which loads torch and Lightning).
tests/test_config.py reads the signatures again and checks this table against them.

An argument becomes a field when YAML can express its type (Sequence -> list, Path -> str, an Enum -> a Literal of
its values: anomalib's enums are str enums, equal to their values); `self`, `precision`, the pre/post-processing
components, *args/**kwargs and the fields every adapted config has (`epochs`, `batch_size`) are left out.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple


class Constructor(NamedTuple):
    takes_pre_trained: bool  # its `pre_trained` argument is our `pretrained` field
    fields: dict[str, tuple[Any, Any]]  # argument -> (config type, anomalib's default), in signature order


# PadimModel's n_features where the config leaves it None, per backbone (padim.torch_model._N_FEATURES_DEFAULTS)
PADIM_N_FEATURES = {"resnet18": 100, "wide_resnet50_2": 550}

_LAYERS_123 = ["layer1", "layer2", "layer3"]

CONSTRUCTORS: dict[str, Constructor] = {
    "padim": Constructor(
        True, {"backbone": (str, "resnet18"), "layers": (list[str], _LAYERS_123), "n_features": (int | None, None)}
    ),
    "dfm": Constructor(
        True,
        {
            "backbone": (str, "resnet50"),
            "layer": (str, "layer3"),
            "pooling_kernel_size": (int, 4),
            "pca_level": (float, 0.97),
            "score_type": (str, "fre"),
        },
    ),
    "dfkde": Constructor(
        True,
        {
            "backbone": (str, "resnet18"),
            "layers": (list[str], ["layer4"]),
            "n_pca_components": (int, 16),
            "feature_scaling_method": (Literal["norm", "scale"], "scale"),
            "max_training_points": (int, 40000),
        },
    ),
    "cflow": Constructor(
        True,
        {
            "backbone": (str, "wide_resnet50_2"),
            "layers": (list[str], ["layer2", "layer3", "layer4"]),
            "fiber_batch_size": (int, 64),
            "decoder": (str, "freia-cflow"),
            "condition_vector": (int, 128),
            "coupling_blocks": (int, 8),
            "clamp_alpha": (float, 1.9),
            "permute_soft": (bool, False),
            "lr": (float, 0.0001),
        },
    ),
    "fastflow": Constructor(
        True,
        {
            "backbone": (str, "resnet18"),
            "flow_steps": (int, 8),
            "conv3x3_only": (bool, False),
            "hidden_ratio": (float, 1.0),
        },
    ),
    "reverse_distillation": Constructor(
        True,
        {
            "backbone": (str, "wide_resnet50_2"),
            "layers": (list[str], _LAYERS_123),
            "anomaly_map_mode": (Literal["add", "multiply"], "add"),
        },
    ),
    "stfpm": Constructor(False, {"backbone": (str, "resnet18"), "layers": (list[str], _LAYERS_123)}),
    "ganomaly": Constructor(
        False,
        {
            "n_features": (int, 64),
            "latent_vec_size": (int, 100),
            "extra_layers": (int, 0),
            "add_final_conv_layer": (bool, True),
            "wadv": (int, 1),
            "wcon": (int, 50),
            "wenc": (int, 1),
            "lr": (float, 0.0002),
            "beta1": (float, 0.5),
            "beta2": (float, 0.999),
        },
    ),
    "supersimplenet": Constructor(
        False,
        {
            "perlin_threshold": (float, 0.2),
            "backbone": (str, "wide_resnet50_2.tv_in1k"),
            "layers": (list[str], ["layer2", "layer3"]),
            "supervised": (bool, False),
            "adapt_cls_features": (bool, False),
        },
    ),
    "uninet": Constructor(
        False,
        {
            "student_backbone": (str, "wide_resnet50_2"),
            "teacher_backbone": (str, "wide_resnet50_2"),
            "temperature": (float, 0.1),
        },
    ),
    "csflow": Constructor(
        False,
        {
            "cross_conv_hidden_channels": (int, 1024),
            "n_coupling_blocks": (int, 4),
            "clamp": (int, 3),
            "num_channels": (int, 3),
        },
    ),
    "cfa": Constructor(
        False,
        {
            "backbone": (str, "wide_resnet50_2"),
            "gamma_c": (int, 1),
            "gamma_d": (int, 1),
            "num_nearest_neighbors": (int, 3),
            "num_hard_negative_features": (int, 3),
            "radius": (float, 1e-05),
        },
    ),
    "fre": Constructor(
        True,
        {
            "backbone": (str, "resnet50"),
            "layer": (str, "layer3"),
            "pooling_kernel_size": (int, 2),
            "input_dim": (int, 65536),
            "latent_dim": (int, 220),
        },
    ),
    "efficient_ad": Constructor(
        False,
        {
            "imagenet_dir": (str, "./datasets/imagenette"),
            "teacher_out_channels": (int, 384),
            "model_size": (Literal["medium", "small"] | str, "small"),
            "lr": (float, 0.0001),
            "weight_decay": (float, 1e-05),
            "padding": (bool, False),
            "pad_maps": (bool, True),
        },
    ),
}
