"""WinCLIP (`winclip`) and condition-aware WinCLIP (`ca_winclip`) on anomalib 2.7's `WinClipModel`.

The researcher's zero/few-shot line (docs/research-facts.md#winclip): open_clip ViT-B-16-plus-240 at 240 x 240,
nearest resize, CLIP mean/std (`data_defaults`), the class name in WinCLIP's prompt ensemble as the text knob.

- **Scoring** is anomalib's: the image score is the zero-shot text score of the global embedding; with references,
  the mean of that and the maximum of the few-shot map (patch + multi-scale window association to the references'
  embeddings). Only the few-shot path needs window embeddings, so zero-shot trials encode each image once.
- **References** are the fit set: `winclip`'s `k_shot` IS `data.train_shots` (0 = zero-shot, nothing fitted), drawn
  seeded from train normals, or from test/good with `data.reference_source: test` (then removed from evaluation).
  `ca_winclip` draws `refs_per_bank` per bank from its fit set, split by the p90 gate it shares with `ca_patchcore`
  (`hdmap.models.gating`): train normals carry no cold/warm label, so every gating mode uses the same references.
- **Gating** (`ca_winclip`): `mixed` one bank of both banks' references (plain few-shot WinCLIP), `oracle` the true
  test condition (validation normals: the p90 gate), `p90` the train-calibrated intensity gate, `clip_topk` the
  researcher's gate: the bank whose references' global CLIP embeddings are most similar to the image (mean cosine
  of the `gate_k` most similar; default all of the bank's, as in the researcher's runs). `predict_step` returns
  `gate` for every mode but `mixed` (rows: gating_accuracy).
- **Weights are never downloaded**: anomalib's constructor asks open_clip for `laion400m_e31`; the CLIP is built
  without weights, then loaded from `model.weights` (an open_clip checkpoint) or the local HF / open_clip cache,
  else `WeightsNotFoundError` before any fit. `pretrained: false` = random init, and the row says so. The
  tokenizer's BPE vocabulary ships inside open_clip. `clip_model` picks another open_clip ViT (e.g. the 2-layer
  `hdmap-tiny-clip` of `clip_configs/`, random init only, for smoke tests); other input sizes than the
  architecture's interpolate its position embeddings (open_clip's own loader).
- **Sweep speed**: with a disk cache (`runtime.feature_cache`) the image/window/patch embeddings of each batch and
  the prompt embeddings are memoised by content (input tensor hash, weight hash), so trials that differ only in
  gating, references or seed-independent choices encode each test image once.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pickle
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hdmap.cache import hash_array
from hdmap.errors import WeightsNotFoundError
from hdmap.models.base import AnomalyModule
from hdmap.models.configs.winclip import CAWinClipConfig, ClipConfig, register_clip_configs
from hdmap.models.gating import COLD, WARM, P90Gate, fit_intensities, oracle

CLIP_CACHE = "~/.cache/clip"  # open_clip's download folder for URL checkpoints
REFERENCES = 0  # the one reference bank of plain WinCLIP


# ---------------------------------------------------------------- weights and construction


class _QuietRandomInit(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:  # weights are loaded right after, or random init is asked for
        return not record.getMessage().startswith("No pretrained weights loaded")


@contextlib.contextmanager
def _offline_open_clip(cfg: ClipConfig, size: tuple[int, int]):
    """anomalib's constructor asks open_clip for ViT-B-16-plus-240 + laion400m_e31 (a download): build the
    configured architecture at the trial's input size without any weights instead."""
    import open_clip

    real = open_clip.create_model_and_transforms
    quiet = _QuietRandomInit()

    def create(_model_name, pretrained=None, **kwargs):
        return real(cfg.clip_model, pretrained=None, force_image_size=size, **kwargs)

    open_clip.create_model_and_transforms = create
    logging.getLogger().addFilter(quiet)
    try:
        yield
    finally:
        open_clip.create_model_and_transforms = real
        logging.getLogger().removeFilter(quiet)


def find_clip_weights(cfg: ClipConfig) -> Path:
    """An open_clip checkpoint: `model.weights`, else the tag's file in the HF cache or open_clip's URL cache."""
    import open_clip
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.constants import HF_HUB_CACHE
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    what = f"model {cfg.name!r} (open_clip {cfg.clip_model}, tag {cfg.clip_tag})"
    if cfg.weights:
        path = Path(cfg.weights).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(f"model.weights={cfg.weights!r} for {what}: no such file")
        return path
    source = open_clip.get_pretrained_cfg(cfg.clip_model, cfg.clip_tag)
    looked, fetch = [], None
    hf_hub, url = source.get("hf_hub"), source.get("url")
    if hf_hub:
        repo, filename = os.path.split(hf_hub)  # open_clip's convention: "org/repo/" = its default file names
        names = [filename] if filename else [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
        for name in names:
            hit = try_to_load_from_cache(repo, name)
            if isinstance(hit, str):
                return Path(hit)
        looked.append(f"HF cache {HF_HUB_CACHE} (repo {repo}, files {'|'.join(names)})")
        fetch = f"huggingface-cli download {repo}"
    if url:
        candidate = Path(CLIP_CACHE).expanduser() / os.path.basename(url)
        if candidate.is_file():
            return candidate
        looked.append(f"open_clip cache {candidate}")
        fetch = fetch or f"download {url}"
    if not source:
        tags = open_clip.list_pretrained_tags_by_model(cfg.clip_model)
        looked.append(f"nowhere: open_clip knows no tag {cfg.clip_tag!r} for it (known: {', '.join(tags) or 'none'})")
    raise WeightsNotFoundError(
        f"pretrained weights for {what} not found (this platform never downloads at run time).\n"
        f"  looked in: {'; '.join(looked)}\n"
        f"  provide them by one of: (1) model.weights=/path/to/open_clip_pytorch_model.bin (an open_clip checkpoint of "
        f"{cfg.clip_model}); (2) on a machine with internet run `{fetch or 'open_clip.create_model(...)'}` and copy "
        f"the HF cache (HF_HOME) or {CLIP_CACHE} to this node; (3) model.pretrained=false for random initialisation "
        f"(results will say so)."
    )


def build_winclip_model(cfg: ClipConfig, size: tuple[int, int]):
    """anomalib's WinClipModel on the configured CLIP; weights from local files only (pretrained: false: random)."""
    import open_clip
    from anomalib.models.image.winclip.torch_model import WinClipModel

    path = find_clip_weights(cfg) if cfg.pretrained else None  # before the (heavy) construction
    with _offline_open_clip(cfg, size):
        model = WinClipModel(scales=tuple(cfg.scales), apply_transform=False)
    model.backbone, model.pretrained = cfg.clip_model, None
    if path is not None:
        try:
            open_clip.load_checkpoint(model.clip, str(path))
        except (RuntimeError, ValueError, KeyError, EOFError, pickle.UnpicklingError) as exc:  # not this model's file
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise WeightsNotFoundError(f"{path} does not fit open_clip {cfg.clip_model} ({first})") from None
        model.pretrained = str(path)
    return model.eval()


# ---------------------------------------------------------------- modules


@dataclass
class Embeddings:
    """CLIP embeddings of a set of images: global (N, D); with the few-shot parts, windows per scale and patches."""

    image: torch.Tensor
    windows: list[torch.Tensor] | None = None
    patches: torch.Tensor | None = None

    @staticmethod
    def cat(parts: list[Embeddings]) -> Embeddings:
        return Embeddings(
            torch.cat([p.image for p in parts]),
            [torch.cat(ws) for ws in zip(*[p.windows for p in parts])],
            torch.cat([p.patches for p in parts]),
        )


class WinClipModule(AnomalyModule):
    """Plain WinCLIP: every fit image is a reference (the fit set has exactly k_shot images)."""

    def __init__(self, cfg: ClipConfig, transform: torch.nn.Module, seed: int = 0) -> None:
        super().__init__(transform)
        self.cfg, self.seed = cfg, seed
        self.model = build_winclip_model(cfg, transform.size)
        self.automatic_optimization = False
        self.banks: dict[int, Embeddings] = {}
        self._ref_images: dict[int, list[torch.Tensor]] = {}
        self._weights_sha1: str | None = None

    def configure_optimizers(self) -> None:
        return None

    # ---- references: collected during the one fit epoch, embedded at its end

    def bank_rows(self, batch: dict) -> dict[int, list[int]]:
        """Rows of a fit batch that are references, per bank."""
        return {REFERENCES: list(range(len(batch["image"])))}

    def training_step(self, batch: dict, batch_idx: int) -> None:
        for bank, rows in self.bank_rows(batch).items():
            if rows:
                self._ref_images.setdefault(bank, []).append(batch["image"][rows])

    def on_train_end(self) -> None:
        self.banks = {  # embedded batch by batch, as collected: peak memory stays one batch's windows
            bank: Embeddings.cat([self._embed(part, few_shot=True) for part in parts])
            for bank, parts in self._ref_images.items()
        }
        self._ref_images = {}

    # ---- scoring

    def on_predict_start(self) -> None:
        self._text_embeddings()

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        emb = self._embed(batch["image"], few_shot=bool(self.banks))
        zero = self._zero_shot(emb)
        return {"score": self._combined(zero, emb, REFERENCES) if self.banks else zero}

    def _zero_shot(self, emb: Embeddings) -> torch.Tensor:
        from anomalib.models.image.winclip.utils import class_scores

        return class_scores(emb.image, self.model.text_embeddings, self.model.temperature, target_class=1)

    def _combined(self, zero: torch.Tensor, emb: Embeddings, bank: int) -> torch.Tensor:
        """anomalib's few-shot image score: mean of the zero-shot score and the few-shot map's maximum."""
        model, refs = self.model, self.banks[bank]
        model._visual_embeddings, model._patch_embeddings = refs.windows, refs.patches  # this bank's references
        few_shot = model._compute_few_shot_scores(emb.patches, emb.windows)
        return (zero + few_shot.amax(dim=(-2, -1))) / 2

    # ---- embeddings, memoised by content in the trial's disk cache

    @torch.no_grad()
    def _encode(self, images: torch.Tensor, few_shot: bool) -> Embeddings:
        if few_shot:
            image, windows, patches = self.model.encode_image(images)
            return Embeddings(image, list(windows), patches)
        image, _tokens = self.model.clip.encode_image(images)
        return Embeddings(image)

    def _embed(self, images: torch.Tensor, few_shot: bool) -> Embeddings:
        if self.disk_cache is None:
            return self._encode(images, few_shot)
        key = {
            "clip": self._weights_key(),
            "images": hash_array(images.detach().cpu().numpy()),
            "few_shot": few_shot,
            "scales": self.cfg.scales,
        }

        def compute(writer) -> None:
            emb = self._encode(images, few_shot)
            writer.put("image", emb.image.cpu().numpy())
            if few_shot:
                writer.put("patches", emb.patches.cpu().numpy())
                for i, window in enumerate(emb.windows):
                    writer.put(f"window{i}", window.cpu().numpy())

        entry = self.disk_cache.get("winclip", key, compute)

        def load(name: str) -> torch.Tensor:
            return torch.from_numpy(np.array(entry[name])).to(images.device)

        if not few_shot:
            return Embeddings(load("image"))
        return Embeddings(load("image"), [load(f"window{i}") for i in range(len(self.cfg.scales))], load("patches"))

    def _text_embeddings(self) -> None:
        """The prompt ensemble's normal/anomalous text embeddings (once; memoised per weights and class name)."""
        model = self.model
        if model._text_embeddings.numel():
            return
        if self.disk_cache is None:
            model.setup(class_name=self.cfg.class_name)
            return
        key = {"clip": self._weights_key(), "class_name": self.cfg.class_name, "anomalib": metadata.version("anomalib")}

        def compute(writer) -> None:
            model.setup(class_name=self.cfg.class_name)
            writer.put("text", model._text_embeddings.cpu().numpy())

        entry = self.disk_cache.get("winclip_text", key, compute)
        model._text_embeddings = torch.from_numpy(np.array(entry["text"])).to(self.device)

    def _weights_key(self) -> str:
        if self._weights_sha1 is None:
            digest = hashlib.sha1()
            for name, tensor in self.model.clip.state_dict().items():
                digest.update(name.encode())
                digest.update(hash_array(tensor.detach().cpu().numpy()).encode())
            self._weights_sha1 = digest.hexdigest()
        return self._weights_sha1


class CAWinClipModule(WinClipModule):
    """Cold and warm reference banks from the fit images (split by the shared p90 gate) and a gate per test image."""

    def __init__(self, cfg: CAWinClipConfig, transform: torch.nn.Module, seed: int = 0) -> None:
        super().__init__(cfg, transform, seed)
        self.gate = P90Gate(cfg.gate_threshold)
        self.selected: dict[int, set[int]] = {}
        self.gate_stats: dict = {}

    def on_train_start(self) -> None:
        values, index = fit_intensities(self.trainer.train_dataloader)
        self.gate.calibrate(values)
        gated = self.cfg.gating != "mixed"
        self.selected = self.gate.draw_banks(
            values, index, self.cfg.refs_per_bank, self.seed, "model.refs_per_bank", gated
        )
        self.gate_stats = self.gate.stats(values)

    def bank_rows(self, batch: dict) -> dict[int, list[int]]:
        index = torch.as_tensor(batch["index"]).tolist()
        return {bank: [i for i, idx in enumerate(index) if idx in self.selected[bank]] for bank in (COLD, WARM)}

    def on_train_end(self) -> None:
        super().on_train_end()
        if self.cfg.gating == "mixed":  # one bank holding both banks' references
            self.banks = {REFERENCES: Embeddings.cat([self.banks[b] for b in (COLD, WARM) if b in self.banks])}

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        emb = self._embed(batch["image"], few_shot=True)
        zero = self._zero_shot(emb)
        if self.cfg.gating == "mixed":
            return {"score": self._combined(zero, emb, REFERENCES)}
        gate = self._route(batch, emb)
        score = torch.empty_like(zero)
        for bank in (COLD, WARM):
            routed = gate == bank
            if routed.any():
                score = torch.where(routed, self._combined(zero, emb, bank), score)
        return {"score": score, "gate": gate.float()}

    def _route(self, batch: dict, emb: Embeddings) -> torch.Tensor:
        if self.cfg.gating == "clip_topk":
            return self._clip_topk(emb)
        gate = self.gate.route(batch["raw"]).to(emb.image.device)
        if self.cfg.gating == "oracle":
            gate = oracle(batch["condition"], gate)
        return gate

    def _clip_topk(self, emb: Embeddings) -> torch.Tensor:
        """Warm where the mean cosine of the gate_k most similar warm references beats the cold one's (ties: cold)."""
        image = F.normalize(emb.image.float(), dim=-1)
        k = self.cfg.gate_k or self.cfg.refs_per_bank
        similarity = [
            (image @ F.normalize(self.banks[bank].image.float(), dim=-1).T).topk(k, dim=1).values.mean(1)
            for bank in (COLD, WARM)
        ]
        return (similarity[WARM] > similarity[COLD]).long()


def build(cfg: ClipConfig, transform: torch.nn.Module, seed: int = 0) -> WinClipModule:
    return (CAWinClipModule if isinstance(cfg, CAWinClipConfig) else WinClipModule)(cfg, transform, seed)


register_clip_configs()  # in every process that builds a module, Ray workers too
