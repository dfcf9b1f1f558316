"""Shared fixtures: tiny simulated HDMAP data and tiny, fast trial configs. Everything offline."""

import os

# No network here or in CI: model hubs must fail at once, W&B must stay offline.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

import pytest

from hdmap.data.simulate import simulate


@pytest.fixture(scope="session")
def sim_root(tmp_path_factory):
    """Two domains, 40 train and 40+40 test images each: enough to score, small enough to be quick."""
    root = tmp_path_factory.mktemp("hdmap") / "40_tiff_sim"
    simulate(root, n_train=40, n_test=40, domains=["A", "C"], seed=0)
    return root


@pytest.fixture(scope="session")
def sim_root_all(tmp_path_factory):
    """All four domains, 12 train and 4+4 test images each: for `data.domain: all` (one model on every domain)."""
    root = tmp_path_factory.mktemp("hdmap") / "12_tiff_sim_abcd"
    simulate(root, n_train=12, n_test=4, domains=["A", "B", "C", "D"], seed=0)
    return root


def tiny_overrides(root, model="patchcore"):
    """CLI-style overrides for a fast trial on CPU (random init: pretrained weights are not available here)."""
    common = [f"data.root={root}", "data.domain=C"]
    if model == "patchcore":
        return common + [
            "model.backbone=resnet18",
            "model.pretrained=false",
            "data.image_size=[64,192]",
            "model.coreset_ratio=0.1",
        ]
    if model == "draem":
        return common + [
            "model.name=draem",
            "model.epochs=2",
            "model.base_width=16",
            "data.image_size=[32,96]",
            "data.normalization=none",
        ]
    if model in ("cutpaste", "cutpaste_clf", "draem_cutpaste"):
        width = "model.base_width=8" if model == "draem_cutpaste" else "model.width=8"
        return common + [
            f"model.name={model}",
            "model.epochs=1",
            width,
            "model.batch_size=16",
            "model.cut_w=[2,48]",
            "data.image_size=[32,96]",
            "data.normalization=none",
        ]
    if model in TINY:
        return common + ["data.image_size=[64,64]", f"model.name={model}", *TINY[model]]
    raise ValueError(model)


@pytest.fixture
def fresh_arrays(monkeypatch):
    """Split loading from scratch: no node cache from the environment, an empty per-process cache before and after."""
    from hdmap.data.arrays import CACHE_ENV, clear_cache

    monkeypatch.delenv(CACHE_ENV, raising=False)
    clear_cache()
    yield
    clear_cache()


@pytest.fixture
def s3(monkeypatch):
    """A moto S3 server on loopback with a bucket "lab"; yields the URI query that points pyarrow at it."""
    moto_server = pytest.importorskip("moto.server", reason="moto is a test dependency (pip install -e '.[test]')")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    import boto3

    boto3.client("s3", endpoint_url=f"http://{host}:{port}").create_bucket(Bucket="lab")
    yield f"endpoint_override={host}:{port}&scheme=http&region=us-east-1"
    server.stop()


DINO_TINY = [
    "model.encoder=vit_small_patch14_reg4_dinov2",
    "model.pretrained=false",
    "model.target_layers=[0,1]",
    "model.fuse_layers=[[0],[1]]",
    "model.decoder_depth=2",
    "model.max_steps=2",
    "model.val_every_steps=1",
    "model.warmup_steps=1",
    "model.batch_size=4",
    "data.image_size=[28,84]",
]

# one tiny, random-init trial per model (the parametrised test in test_all_models.py runs every registered one)
_R18 = ["model.pretrained=false"]
TINY: dict[str, list[str]] = {
    "draem_sevnet": [
        "model.epochs=1",
        "model.base_width=8",
        "model.patch_width_range=[4,16]",
        "data.to_rgb=false",
        "data.image_size=[32,96]",
        "data.normalization=none",
    ],
    "ca_patchcore": _R18 + ["model.backbone=resnet18", "model.layers=[layer2]", "model.gating=p90"],
    # a 2-layer, 64 px CLIP shipped for smoke tests (hdmap/models/clip_configs); ViT-B-16-plus-240 takes ~14 s per
    # image few-shot on 2 CPU cores (benchmarks/RESULTS.md)
    "winclip": _R18 + ["model.clip_model=hdmap-tiny-clip", "model.k_shot=2"],
    "ca_winclip": _R18 + ["model.clip_model=hdmap-tiny-clip", "model.refs_per_bank=1", "model.gating=clip_topk"],
    "cpd_patchcore": _R18 + ["model.backbone=resnet18", "model.layers=[layer2]"],
    "padim": _R18 + ["model.backbone=resnet18", "model.layers=[layer1,layer2]", "model.n_features=20"],
    "dfm": _R18 + ["model.backbone=resnet18", "model.layer=layer2"],
    "dfkde": _R18 + ["model.backbone=resnet18", "model.layers=[layer3]", "model.n_pca_components=4"],
    "cflow": _R18
    + [
        "model.backbone=resnet18",
        "model.layers=[layer2,layer3]",
        "model.epochs=1",
        "model.coupling_blocks=2",
        "model.condition_vector=16",
        "model.fiber_batch_size=16",
    ],
    "fastflow": _R18 + ["model.backbone=resnet18", "model.epochs=1", "model.flow_steps=2", "model.batch_size=16"],
    "reverse_distillation": _R18 + ["model.backbone=resnet18", "model.epochs=1"],
    "stfpm": _R18 + ["model.backbone=resnet18", "model.epochs=1"],
    "ganomaly": ["model.epochs=1", "model.n_features=16", "model.latent_vec_size=16", "model.batch_size=16"],
    # its Perlin masks need a feature map >= 64 px: layer1 (stride 4, upscaled x2) at 128 px
    "supersimplenet": _R18
    + ["model.backbone=resnet18", "model.layers=[layer1,layer2]", "model.epochs=1", "data.image_size=[128,128]"],
    # its attention bottleneck is wired to (wide_)resnet50 widths
    "uninet": _R18
    + [
        "model.student_backbone=resnet50",
        "model.teacher_backbone=resnet50",
        "model.epochs=1",
        "data.image_size=[32,32]",
    ],
    "csflow": _R18
    + [
        "model.epochs=1",
        "model.cross_conv_hidden_channels=32",
        "model.n_coupling_blocks=1",
        "data.image_size=[128,128]",
    ],
    "cfa": _R18 + ["model.backbone=resnet18", "model.epochs=1"],
    # its autoencoder (5 stride-2 convs, then an 8 x 8 one) needs 256 px; the test adds a local imagenet_dir
    "efficient_ad": _R18
    + ["model.max_steps=2", "model.padding=true", "data.normalization=none", "data.image_size=[256,256]"],
    # ViT-S DINOv2-reg at random init, 2 encoder blocks, 2 decoder blocks, 2 x 6 tokens, 2 steps
    "dinomaly": DINO_TINY,
    "sev_dinomaly": DINO_TINY + ["model.aug_ratio=0.5", "model.severity_head_widths=[16]"],
    "fre": _R18
    + [
        "model.backbone=resnet18",
        "model.layer=layer2",
        "model.epochs=1",
        "model.input_dim=2048",
        "model.latent_dim=32",
    ],
}
