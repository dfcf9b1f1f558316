"""winclip / ca_winclip: anomalib's scores, references = the fit set, every gating mode, the p90 gate shared with
ca_patchcore, weights from local files only and no network. All on the 2-layer `hdmap-tiny-clip` (random init)."""

import socket
import urllib.request

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hdmap.config import load_trial_config
from hdmap.data.arrays import load_split
from hdmap.data.simulate import simulate
from hdmap.data.splits import build_trial_data
from hdmap.data.transforms import HdmapTransform
from hdmap.errors import WeightsNotFoundError
from hdmap.models.configs.winclip import WinClipConfig
from hdmap.models.gating import COLD, WARM, P90Gate, p90
from hdmap.models.winclip import REFERENCES, build
from hdmap.trial import run_trial

TINY = ["model.clip_model=hdmap-tiny-clip", "model.pretrained=false", "model.batch_size=16"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("winclip") / "16_tiff_sim"
    simulate(root, n_train=16, n_test=6, domains=["C"], seed=0)
    return root


def overrides(root, *extra):
    return [f"data.root={root}", "data.domain=C", *TINY, *extra]


class _Grab(L.Callback):
    def on_predict_start(self, trainer, module):
        self.module = module


def test_scores_are_anomalibs_winclip(root):
    """Zero- and few-shot image scores equal anomalib's WinClipModel.forward on the same images and references."""
    cfg = WinClipConfig(clip_model="hdmap-tiny-clip", pretrained=False, class_name="sensor fault detection heatmap")
    transform = HdmapTransform((64, 64), "nearest", normalization="clip")
    module = build(cfg, transform).eval()
    images = transform(torch.from_numpy(np.array(load_split(root, "C", "test").images[:6])))
    refs, test = images[:2], images[2:]
    module._text_embeddings()
    zero = module.predict_step({"image": test}, 0)["score"]
    module.banks = {REFERENCES: module._embed(refs, few_shot=True)}
    few = module.predict_step({"image": test}, 0)["score"]
    anomalib = module.model  # anomalib's own path: k_shot 0, then setup() with the references
    assert torch.allclose(zero, anomalib(test).pred_score, atol=1e-6)
    anomalib.setup(reference_images=refs)
    assert anomalib.k_shot == 2 and torch.allclose(few, anomalib(test).pred_score, atol=1e-6)
    assert not torch.allclose(zero, few)


def test_references_are_the_fit_set(root):
    """Zero-shot fits nothing; k_shot references come from train (test_all_models) or test/good, then not evaluated."""
    (zero,) = run_trial(load_trial_config(None, overrides(root, "model.name=winclip"))).rows
    assert zero["status"] == "ok" and zero["n_fit"] == 0 and zero["epochs_run"] == 0 and zero["n_test"] == 12
    assert zero["data.train_shots"] == 0 and zero["references_removed"] == 0
    cfg = load_trial_config(None, overrides(root, "model.name=winclip", "model.k_shot=2", "data.reference_source=test"))
    result = run_trial(cfg)
    (row,) = result.rows
    assert row["references_removed"] == 2 and row["n_test"] == 10 and row["n_fit"] == 2 and row["data.train_shots"] == 2
    refs = build_trial_data(cfg.data, cfg.seed).fit.files  # the same seeded draw the trial made
    assert all("/test/good/" in f for f in refs) and not set(refs) & set(result.scores["file"].to_pylist())


def test_every_gating_mode_uses_the_same_references(root):
    """mixed / oracle / p90 / clip_topk differ only in how scored images are routed; each gate checked on its own."""
    rows, selected = {}, {}
    for gating in ("mixed", "oracle", "p90", "clip_topk"):
        grab = _Grab()
        cfg = load_trial_config(
            None, overrides(root, "model.name=ca_winclip", "model.refs_per_bank=2", f"model.gating={gating}")
        )
        result = run_trial(cfg, callbacks=[grab])
        (rows[gating],) = result.rows
        module, scores = grab.module, result.scores.to_pandas()
        selected[gating] = module.selected
        assert rows[gating]["status"] == "ok" and len(module.selected[COLD]) == len(module.selected[WARM]) == 2
        test = load_split(root, "C", "test")
        if gating == "mixed":
            assert rows[gating]["gating_accuracy"] is None and scores["gate"].isna().all()
            continue
        gates = (scores["gate"] == "warm").to_numpy().astype(int)
        if gating == "oracle":
            assert rows[gating]["gating_accuracy"] == 1.0
        elif gating == "p90":
            assert (gates == (p90(np.array(test.images)) > module.gate.threshold)).all()
        else:  # clip_topk (gate_k: all of a bank's references), recomputed from CLIP global embeddings
            fit = build_trial_data(cfg.data, cfg.seed).fit
            transform = HdmapTransform.for_data(cfg.data)

            def embed(raw, clip=module.model.clip, transform=transform):
                with torch.no_grad():
                    return F.normalize(clip.encode_image(transform(torch.from_numpy(np.array(raw))))[0])

            image = embed(test.images)
            sims = [(image @ embed(fit.images[sorted(module.selected[b])]).T).mean(1) for b in (COLD, WARM)]
            assert (gates == (sims[WARM] > sims[COLD]).long().numpy()).all()
        assert rows[gating]["gating_accuracy"] == pytest.approx((gates == (test.conditions == "warm")).mean())
    assert all(s == selected["mixed"] for s in selected.values())


def test_ca_patchcore_and_ca_winclip_share_the_p90_gate(root):
    """One gate module: on the same fit images and seed both calibrate the same threshold and draw the same refs."""
    modules = {}
    for model in ("ca_patchcore", "ca_winclip"):
        grab = _Grab()
        extra = (
            ["model.backbone=resnet18", "model.layers=[layer2]", "model.shots_per_bank=2", "data.image_size=[32,96]"]
            if model == "ca_patchcore"
            else ["model.refs_per_bank=2"]
        )
        tree = overrides(root, f"model.name={model}", "model.gating=p90", *extra)
        tree = [o for o in tree if model == "ca_winclip" or "clip_model" not in o]
        (row,) = run_trial(load_trial_config(None, tree), callbacks=[grab]).rows
        assert row["status"] == "ok"
        modules[model] = grab.module
    patchcore, winclip = modules["ca_patchcore"], modules["ca_winclip"]
    assert type(patchcore.gate) is type(winclip.gate) is P90Gate
    assert patchcore.gate.threshold == winclip.gate.threshold and patchcore.selected == winclip.selected
    assert patchcore.gate_stats == winclip.gate_stats


def test_weights_from_a_local_file_only(tmp_path):
    transform = HdmapTransform((64, 64), "nearest", normalization="clip")
    torch.manual_seed(1)
    source = build(WinClipConfig(clip_model="hdmap-tiny-clip", pretrained=False), transform)
    path = tmp_path / "tiny.pt"
    torch.save(source.model.clip.state_dict(), path)
    torch.manual_seed(2)
    loaded = build(WinClipConfig(clip_model="hdmap-tiny-clip", weights=str(path)), transform)
    for name, tensor in source.model.clip.state_dict().items():
        assert torch.equal(loaded.model.clip.state_dict()[name], tensor), name
    assert loaded.model.pretrained == str(path) and loaded.cfg.weights_label() == str(path)
    other = tmp_path / "other.pt"
    torch.save({"visual.proj": torch.zeros(3)}, other)
    with pytest.raises(WeightsNotFoundError, match="does not fit open_clip hdmap-tiny-clip"):
        build(WinClipConfig(clip_model="hdmap-tiny-clip", weights=str(other)), transform)


def test_nothing_reaches_the_network(root, tmp_path, monkeypatch):
    """HF offline, empty caches, sockets and urllib refusing: random init runs; pretrained fails precisely, first."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    (row,) = run_trial(load_trial_config(None, overrides(root, "model.name=winclip", "model.k_shot=1"))).rows
    assert row["status"] == "ok" and row["pretrained_weights"] == "random-init (pretrained: false)"
    fits = []
    monkeypatch.setattr("lightning.Trainer.fit", lambda *a, **k: fits.append(1))
    cfg = load_trial_config(None, [f"data.root={root}", "data.domain=C", "model.name=ca_winclip"])  # the real default
    with pytest.raises(WeightsNotFoundError) as err:
        run_trial(cfg)
    text = str(err.value)
    for named in ("ca_winclip", "ViT-B-16-plus-240", "laion400m_e31", "model.weights=", "pretrained=false"):
        assert named in text
    assert str(tmp_path / "hf" / "hub") in text and str(tmp_path / "home" / ".cache" / "clip") in text
    assert not fits and not attempts


@pytest.mark.parametrize("gate_k, gate", [(1, COLD), (None, WARM)])
def test_clip_topk_mean_of_the_gate_k_most_similar_references(gate_k, gate):
    from hdmap.models.configs.winclip import CAWinClipConfig
    from hdmap.models.winclip import Embeddings

    cfg = CAWinClipConfig(clip_model="hdmap-tiny-clip", pretrained=False, gating="clip_topk", gate_k=gate_k)
    module = build(cfg, HdmapTransform((64, 64), "nearest", normalization="clip"))
    module.banks = {  # cosine to the image [1, 0]: cold references 1.0 and 0.0, warm ones 0.8 and 0.8
        COLD: Embeddings(torch.tensor([[1.0, 0.0], [0.0, 1.0]])),
        WARM: Embeddings(torch.tensor([[0.8, 0.6], [0.8, 0.6]])),
    }
    assert module._clip_topk(Embeddings(torch.tensor([[2.0, 0.0]]))).tolist() == [gate]
