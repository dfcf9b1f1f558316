"""Loader, layout errors, transforms and the evaluation-hygiene rules of splits."""

import numpy as np
import pytest
import tifffile
import torch

from hdmap.config import ConfigError, load_trial_config
from hdmap.data.arrays import load_split
from hdmap.data.layout import DataLayoutError, condition_of, normalize_domain
from hdmap.data.splits import build_trial_data
from hdmap.data.transforms import HdmapTransform


def write_layout(root, domains=("domain_C",), n_train=6, n_test=4, value=0.5):
    """A data root in the real layout, written without the simulator (as another program would)."""
    rng = np.random.default_rng(1)
    for d in domains:
        for sub, n in (("train/good", n_train), ("test/good", n_test), ("test/fault", n_test)):
            folder = root / d / sub
            folder.mkdir(parents=True)
            for i in range(n):
                img = (rng.random((31, 95)) * value).astype(np.float32)
                if sub == "test/fault":
                    img[10] += 1.5  # a bright horizontal band; > 1 must survive loading
                tifffile.imwrite(folder / f"{i:06d}.tiff", img)
    return root


pytestmark = pytest.mark.usefixtures("fresh_arrays")


def test_loads_real_layout_as_float32_unclipped(tmp_path):
    root = write_layout(tmp_path / "r")
    test = load_split(root, "C", "test")
    assert test.images.dtype == np.float32 and test.images.shape == (8, 31, 95)
    assert test.images.max() > 1.5  # never clipped
    assert list(test.labels) == [0] * 4 + [1] * 4
    assert list(test.conditions) == ["cold", "cold", "warm", "warm"] * 2
    assert test.files[0] == "domain_C/test/good/000000.tiff"
    assert np.isnan(test.severity).all()  # no sidecar: no severity ground truth
    train = load_split(root, "domain_C", "train")
    assert len(train) == 6 and set(train.conditions) == {None}


def test_condition_rule_is_first_half_cold():
    assert condition_of(499, 1000) == "cold" and condition_of(500, 1000) == "warm"
    assert [condition_of(i, 5) for i in range(5)] == ["cold", "cold", "cold", "warm", "warm"]


def test_decoded_once_per_process(tmp_path, monkeypatch):
    root = write_layout(tmp_path / "r")
    first = load_split(root, "C", "train")
    monkeypatch.setattr(tifffile, "imread", lambda *_: pytest.fail("re-decoded a cached split"))
    assert load_split(root, "domain_C", "train") is first


def test_domain_names():
    assert normalize_domain("c") == normalize_domain("domain_C") == "domain_C"
    with pytest.raises(ValueError, match="expected one of A, B, C, D"):
        normalize_domain("E")


def test_error_missing_root(tmp_path):
    with pytest.raises(DataLayoutError, match=r"data root .*nope does not exist"):
        load_split(tmp_path / "nope", "C", "train")


def test_error_missing_domain_lists_found(tmp_path):
    root = write_layout(tmp_path / "r", domains=("domain_A",))
    with pytest.raises(DataLayoutError, match=r"domain_C does not exist; folders found .*\['domain_A'\]"):
        load_split(root, "C", "train")


def test_error_split_without_tiffs(tmp_path):
    root = write_layout(tmp_path / "r")
    for f in (root / "domain_C/test/fault").iterdir():
        f.unlink()
    with pytest.raises(DataLayoutError, match=r"test/fault has no \.tiff files"):
        load_split(root, "C", "test")


def test_error_corrupt_file_named(tmp_path):
    root = write_layout(tmp_path / "r")
    bad = root / "domain_C/train/good/000003.tiff"
    bad.write_bytes(b"this is not a tiff")
    with pytest.raises(DataLayoutError, match=r"000003\.tiff: not a readable TIFF"):
        load_split(root, "C", "train")


@pytest.mark.parametrize(
    "array, found",
    [
        (np.zeros((31, 95), np.float64), "dtype float64, expected float32"),
        (np.zeros((32, 95), np.float32), r"shape \(32, 95\), expected \(31, 95\)"),
    ],
)
def test_error_wrong_dtype_or_shape_named(tmp_path, array, found):
    root = write_layout(tmp_path / "r")
    tifffile.imwrite(root / "domain_C/test/good/000001.tiff", array)
    with pytest.raises(DataLayoutError, match=rf"000001\.tiff: {found}"):
        load_split(root, "C", "test")


def test_transform_sizes_and_methods():
    raw = torch.rand(2, 31, 95) * 2
    for method in ("nearest", "bilinear", "bicubic", "aspect_pad"):
        out = HdmapTransform((64, 64), method, to_rgb=True, normalization="none")(raw)
        assert out.shape == (2, 3, 64, 64)
    padded = HdmapTransform((64, 64), "aspect_pad", normalization="none")(raw)
    assert padded[:, :, :10].abs().sum() == 0  # 31:95 fitted into 64 wide -> ~21 rows of content, zero rows around
    gray = HdmapTransform((32, 96), "nearest", to_rgb=False, normalization="none")(raw)
    assert gray.shape == (2, 1, 32, 96) and gray.max() > 1  # not clipped
    norm = HdmapTransform((32, 96), "nearest", normalization="imagenet")(torch.zeros(1, 31, 95))
    assert torch.allclose(norm[0, :, 0, 0], torch.tensor([-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225]))


def test_clip_normalisation_and_per_image_rescaling():
    clip = HdmapTransform((32, 96), "nearest", normalization="clip")(torch.zeros(1, 31, 95))
    assert torch.allclose(
        clip[0, :, 0, 0],
        -torch.tensor([0.48145466, 0.4578275, 0.40821073]) / torch.tensor([0.26862954, 0.26130258, 0.27577711]),
    )
    raw = torch.linspace(0.1, 2.9, 31 * 95).reshape(1, 31, 95)
    raw = torch.cat([raw, raw * 0.5 + 0.2, torch.full((1, 31, 95), 0.3)])  # same shape, other gain; a constant image
    minmax = HdmapTransform((31, 95), "nearest", to_rgb=False, normalization="none", per_image_norm="minmax")(raw)
    assert torch.allclose(minmax[0], minmax[1], atol=1e-6) and minmax[0].min() == 0 and minmax[0].max() == 1
    assert (minmax[2] == 0).all()  # a constant image has no range
    robust = HdmapTransform((31, 95), "nearest", to_rgb=False, normalization="none", per_image_norm="robust_p5_p95")
    out = robust(raw)[0].flatten()
    assert out.min() == 0 and out.max() == 1  # clamped beyond the percentiles
    assert (out == 0).float().mean() == pytest.approx(0.05, abs=0.01) and (out == 1).float().mean() == pytest.approx(
        0.05, abs=0.01
    )
    with pytest.raises(ValueError, match="per_image_norm"):
        HdmapTransform((32, 96), per_image_norm="zscore")


def test_center_crop_as_torchvision_and_trial_ids_kept():
    """Dinomaly's resize-then-crop: the centre of the resized image (torchvision's CenterCrop), one transform."""
    from torchvision.transforms.v2 import CenterCrop

    raw = torch.rand(2, 31, 95) * 2
    for size, crop in (((448, 448), (392, 392)), ((45, 99), (28, 84))):
        resized = HdmapTransform(size, normalization="none")(raw)
        cropped = HdmapTransform(size, normalization="none", crop=crop)(raw)
        assert cropped.shape == (2, 3, *crop) and torch.equal(cropped, CenterCrop(crop)(resized))
    assert HdmapTransform((448, 448), crop=(392, 392)).output_size == (392, 392)
    default = load_trial_config(None, [])
    assert "center_crop" not in default.canonical()["data"]  # results written before the option keep their ids
    assert load_trial_config(None, ["data.center_crop=null"]).trial_id == default.trial_id
    cropped = load_trial_config(None, ["data.image_size=256", "data.center_crop=224"])
    assert cropped.data.model_input_size == (224, 224) and cropped.trial_id != default.trial_id


def test_validation_from_train_and_shots_seeded(sim_root):
    cfg = load_trial_config(None, [f"data.root={sim_root}", "data.train_shots=5", "data.val_fraction=0.25"]).data
    a, b = build_trial_data(cfg, seed=3), build_trial_data(cfg, seed=3)
    assert list(a.fit.files) == list(b.fit.files) and len(a.fit) == 5
    assert len(a.val) == 10 and all("/train/good/" in f for f in a.val.files)
    assert not set(a.val.files) & set(a.fit.files)  # validation never overlaps the fitted images
    assert list(build_trial_data(cfg, seed=4).fit.files) != list(a.fit.files)
    assert a.references_removed == 0 and len(a.tests["domain_C"]) == 80


def test_test_references_are_removed_from_evaluation(sim_root):
    cfg = load_trial_config(None, [f"data.root={sim_root}", "data.reference_source=test", "data.train_shots=4"]).data
    data = build_trial_data(cfg, seed=0)
    assert all("/test/good/" in f for f in data.fit.files) and len(data.fit) == 4
    evaluated = set(data.tests["domain_C"].files)
    assert len(evaluated) == 76 and not evaluated & set(data.fit.files)
    assert data.references_removed == 4


def test_test_references_need_shots():
    with pytest.raises(ConfigError, match="needs data.train_shots"):
        load_trial_config(None, ["data.reference_source=test"])


def test_cross_domain_tests_every_target(sim_root):
    cfg = load_trial_config(None, [f"data.root={sim_root}", "data.test_domains=[A, C]"]).data
    assert set(build_trial_data(cfg, 0).tests) == {"domain_A", "domain_C"}


def test_domain_all_fits_every_domain_and_calibrates_each_on_its_own(sim_root_all):
    """train_shots and val_fraction per domain; each test domain's threshold normals are its own domain's."""
    cfg = load_trial_config(None, [f"data.root={sim_root_all}", "data.domain=all", "data.train_shots=5"]).data
    data = build_trial_data(cfg, seed=0)
    domains = ["domain_A", "domain_B", "domain_C", "domain_D"]
    assert list(data.tests) == domains and data.references_removed == 0
    fit_domains = [f.split("/")[0] for f in data.fit.files]
    assert {d: fit_domains.count(d) for d in domains} == dict.fromkeys(domains, 5)
    assert len(data.val) == 4 * round(0.1 * 12) and not set(data.val.files) & set(data.fit.files)
    for d in domains:
        calibration = data.val.files[data.val_for[d]]
        assert len(calibration) == 1 and all(f.startswith(f"{d}/train/good/") for f in calibration)
    # domain A is drawn first, as a single-domain trial on A draws it; cross-domain: every row on A's normals
    overrides = [f"data.root={sim_root_all}", "data.domain=A", "data.train_shots=5", "data.test_domains=[A, C]"]
    single = build_trial_data(load_trial_config(None, overrides).data, seed=0)
    assert list(single.fit.files) == [f for f in data.fit.files if f.startswith("domain_A/")]
    assert list(single.val.files) == list(data.val.files[data.val_for["domain_A"]])
    assert [list(v) for v in single.val_for.values()] == [[0], [0]]


def test_domain_all_test_references_come_from_each_domain(sim_root_all):
    cfg = load_trial_config(
        None, [f"data.root={sim_root_all}", "data.domain=all", "data.reference_source=test", "data.train_shots=2"]
    ).data
    data = build_trial_data(cfg, seed=0)
    assert len(data.fit) == 8 and all("/test/good/" in f for f in data.fit.files)
    assert data.references_removed == 8
    for d, split in data.tests.items():
        assert len(split) == 8 - 2 and not set(split.files) & set(data.fit.files), d


def test_domain_all_errors_name_the_missing_domains_and_shots_per_domain(sim_root, sim_root_all):
    cfg = load_trial_config(None, [f"data.root={sim_root}", "data.domain=all"]).data
    with pytest.raises(DataLayoutError, match=r"data\.domain=all .* no domain_B, domain_D folder"):
        build_trial_data(cfg, seed=0)
    cfg = load_trial_config(None, [f"data.root={sim_root_all}", "data.domain=ALL", "data.train_shots=12"]).data
    with pytest.raises(DataLayoutError, match=r"train_shots=12 .* 11 images .* domain_A/.*counts per domain"):
        build_trial_data(cfg, seed=0)
