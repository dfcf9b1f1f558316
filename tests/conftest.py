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


def tiny_overrides(root, model="patchcore"):
    """CLI-style overrides for a fast trial on CPU (random init: pretrained weights are not available here)."""
    common = [f"data.root={root}", "data.domain=C"]
    if model == "patchcore":
        return common + ["model.backbone=resnet18", "model.pretrained=false", "data.image_size=[64,192]",
                         "model.coreset_ratio=0.1"]
    if model == "draem":
        return common + ["model.name=draem", "model.epochs=2", "model.base_width=16", "data.image_size=[32,96]",
                         "data.normalization=none"]
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
