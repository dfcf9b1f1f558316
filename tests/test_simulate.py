"""The simulator writes the real HDMAP layout with the statistics of docs/research-facts.md#data-statistics
(tolerances in messages)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from hdmap.data.arrays import check_headers
from hdmap.data.layout import CONDITIONS_FILE, DOMAINS, IMAGE_SHAPE, condition_of, scan_split
from hdmap.data.simulate import read_ground_truth, simulate

N_TRAIN, N_TEST, SEED = 100, 200, 0
HALF = N_TEST // 2  # first half cold, second half warm


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    """One simulation for the whole module, read back from disk with tifffile."""
    root = simulate(tmp_path_factory.mktemp("sim"), n_train=N_TRAIN, n_test=N_TEST, seed=SEED)
    data = {}
    for domain in DOMAINS:
        data[domain] = {}
        for key, sub in (("train", "train/good"), ("good", "test/good"), ("fault", "test/fault")):
            paths = sorted((root / domain / sub).glob("*.tiff"))
            data[domain][key] = (paths, np.stack([tifffile.imread(p) for p in paths]))
    return root, data


def _groups(data, domain):
    good, fault = data[domain]["good"][1], data[domain]["fault"][1]
    return {
        "good_cold": good[:HALF],
        "good_warm": good[HALF:],
        "fault_cold": fault[:HALF],
        "fault_warm": fault[HALF:],
    }


def _means(groups):
    return {k: v.mean(axis=(1, 2)) for k, v in groups.items()}


def test_layout_counts_dtype_shape_and_range(sim):
    root, data = sim
    for domain in DOMAINS:
        for key, n in (("train", N_TRAIN), ("good", N_TEST), ("fault", N_TEST)):
            paths, images = data[domain][key]
            assert [p.name for p in paths] == [f"{i:06d}.tiff" for i in range(n)], f"{domain}/{key}: names"
            assert images.dtype == np.float32, f"{domain}/{key}: dtype {images.dtype}, expected float32"
            assert images.shape == (n, *IMAGE_SHAPE), f"{domain}/{key}: shape {images.shape}"
            assert images.min() >= 0, f"{domain}/{key}: min {images.min()} < 0"
            assert np.isfinite(images).all(), f"{domain}/{key}: non-finite values"
        # the layout module (what the loader uses) accepts the tree under every rule and assigns cold/warm by index
        check_headers(root, domain, "train")
        check_headers(root, domain, "test")
        test = scan_split(root, domain, "test")
        assert len(test) == 2 * N_TEST and len(scan_split(root, domain, "train")) == N_TRAIN
        assert [e.condition for e in test[:N_TEST]] == [condition_of(i, N_TEST) for i in range(N_TEST)]
    assert (root / "ground_truth.csv").is_file() and (root / "simulation.json").is_file()
    assert not (root / CONDITIONS_FILE).exists()  # the index rule states the split; nothing else may compete


def test_train_max_is_one_and_test_exceeds_it(sim):
    _, data = sim
    for domain in DOMAINS:
        train_max = float(data[domain]["train"][1].max())
        assert abs(train_max - 1.0) <= 1e-6, f"{domain}: train max {train_max}, expected 1.0 (abs tol 1e-6)"
    test_max = max(float(data[d][k][1].max()) for d in DOMAINS for k in ("good", "fault"))
    assert test_max > 1.0, f"no test file exceeds 1 (max {test_max:.3f}); values must not be clipped"


def test_domain_c_warm_cold_ratios(sim):
    _, data = sim
    g = _groups(data, "domain_C")
    m = _means(g)
    ratio = m["good_warm"].mean() / m["good_cold"].mean()
    assert abs(ratio - 1.39) <= 0.10, f"C warm/cold good mean ratio {ratio:.3f}, expected 1.39 ± 0.10"
    std_ratio = g["good_warm"].std(axis=(1, 2)).mean() / g["good_cold"].std(axis=(1, 2)).mean()
    assert abs(std_ratio - 1.6) <= 0.25, f"C warm/cold pixel-std ratio {std_ratio:.3f}, expected 1.6 ± 0.25"


def test_domain_c_fault_good_ratios(sim):
    _, data = sim
    m = _means(_groups(data, "domain_C"))
    cold = m["fault_cold"].mean() / m["good_cold"].mean()
    warm = m["fault_warm"].mean() / m["good_warm"].mean()
    assert abs(cold - 1.13) <= 0.06, f"C fault/good mean ratio, cold {cold:.3f}, expected 1.13 ± 0.06"
    assert abs(warm - 1.17) <= 0.06, f"C fault/good mean ratio, warm {warm:.3f}, expected 1.17 ± 0.06"


def test_domain_c_shares_of_files_above_one(sim):
    _, data = sim
    share = {k: float(np.mean(v.max(axis=(1, 2)) > 1.0)) for k, v in _groups(data, "domain_C").items()}
    assert share["fault_warm"] >= 0.95, f"C fault_warm share max>1 {share['fault_warm']:.3f}, expected >= 0.95"
    assert share["fault_cold"] == 0, f"C fault_cold share max>1 {share['fault_cold']:.3f}, expected 0"
    assert share["good_cold"] == 0, f"C good_cold share max>1 {share['good_cold']:.3f}, expected 0"
    assert share["good_warm"] <= 0.15, f"C good_warm share max>1 {share['good_warm']:.3f}, expected <= 0.15"


def test_domain_c_cold_faults_overlap_warm_normals(sim):
    _, data = sim
    m = _means(_groups(data, "domain_C"))
    overlap = float(np.mean(m["fault_cold"] > m["good_warm"].min()))
    assert 0.02 <= overlap <= 0.35, (
        f"C share of fault_cold means above the smallest good_warm mean {overlap:.3f}, expected in [0.02, 0.35]"
    )


@pytest.mark.parametrize(
    "domain, target", [("domain_A", 0.217), ("domain_B", 0.223), ("domain_C", 0.228), ("domain_D", 0.197)]
)
def test_test_normal_mean_per_domain(sim, domain, target):
    _, data = sim
    mean = float(data[domain]["good"][1].mean())
    assert abs(mean - target) <= 0.03, f"{domain} test-normal mean {mean:.4f}, expected {target} ± 0.03"


@pytest.mark.parametrize(
    "domain, brighter", [("domain_A", True), ("domain_B", False), ("domain_C", True), ("domain_D", False)]
)
def test_fault_polarity_per_domain(sim, domain, brighter):
    _, data = sim
    good, fault = float(data[domain]["good"][1].mean()), float(data[domain]["fault"][1].mean())
    word = "brighter" if brighter else "darker"
    assert (fault > good) == brighter, f"{domain}: fault mean {fault:.4f} vs normal {good:.4f}, expected {word}"


def test_faults_are_horizontal_bands_at_the_recorded_row(sim):
    root, data = sim
    gt = read_ground_truth(root)
    g = _groups(data, "domain_C")
    reference = g["good_warm"].mean(axis=0)
    hits = 0
    for i, image in enumerate(g["fault_warm"]):
        excess = (image - reference).mean(axis=1)  # per-row excess over the matching mean good image
        row = gt[f"domain_C/test/fault/{HALF + i:06d}.tiff"]["fault_row"]
        hits += abs(int(np.argmax(excess)) - row) <= 1
    share = hits / len(g["fault_warm"])
    assert share > 0.8, f"C warm faults whose most-excess row is the fault_row (±1 row): {share:.3f}, expected > 0.8"


def test_warm_differs_from_cold_in_structure_not_only_gain(sim):
    _, data = sim
    for domain in DOMAINS:
        g = _groups(data, domain)
        cold, warm = (x / x.mean(axis=(1, 2), keepdims=True) for x in (g["good_cold"], g["good_warm"]))
        between = np.sqrt(((cold.mean(0) - warm.mean(0)) ** 2).mean())
        within = np.sqrt(((cold[: HALF // 2].mean(0) - cold[HALF // 2 :].mean(0)) ** 2).mean())
        assert between > 3 * within, (
            f"{domain}: brightness-normalised cold/warm mean images differ by {between:.3f} RMS, "
            f"expected > 3x the cold split-half difference ({within:.3f})"
        )


def test_deterministic_per_seed_and_independent_of_other_domains(sim, tmp_path):
    root, _ = sim
    again = simulate(tmp_path / "same", n_train=N_TRAIN, n_test=N_TEST, domains=["C"], seed=SEED)
    other = simulate(tmp_path / "other", n_train=N_TRAIN, n_test=N_TEST, domains=["domain_C"], seed=SEED + 1)
    for rel in ("train/good/000000.tiff", "train/good/000057.tiff", "test/good/000150.tiff", "test/fault/000003.tiff"):
        original = (root / "domain_C" / rel).read_bytes()
        assert (again / "domain_C" / rel).read_bytes() == original, f"same seed, different bytes: {rel}"
        assert (other / "domain_C" / rel).read_bytes() != original, f"different seed, same bytes: {rel}"


def test_ground_truth_sidecar(sim, tmp_path):
    root, _ = sim
    gt = read_ground_truth(root)
    expected = {f"{d}/test/{sub}/{i:06d}.tiff" for d in DOMAINS for sub in ("good", "fault") for i in range(N_TEST)}
    assert set(gt) == expected, "ground_truth.csv must hold exactly one row per test file"
    lines = (root / "ground_truth.csv").read_text().splitlines()
    assert lines[0] == "domain,split,file,label,condition,fault_row,severity"
    assert len(lines) == 1 + len(expected)
    for rel, row in gt.items():
        index = int(Path(rel).stem)
        assert row["condition"] == condition_of(index, N_TEST), f"{rel}: condition {row['condition']}"
        if "/good/" in rel:
            assert row["label"] == 0 and row["severity"] == 0.0 and row["fault_row"] is None, f"{rel}: {row}"
        else:
            assert row["label"] == 1 and row["severity"] > 0, f"{rel}: fault severity must be > 0, got {row}"
            assert 0 <= row["fault_row"] < IMAGE_SHAPE[0], f"{rel}: fault_row {row['fault_row']}"
    severities = np.array([r["severity"] for r in gt.values() if r["label"] == 1])
    assert severities.std() > 0.05, f"fault severities barely vary (sd {severities.std():.3f}, expected > 0.05)"
    meta = json.loads((root / "simulation.json").read_text())
    assert (meta["n_train"], meta["n_test"], meta["seed"]) == (N_TRAIN, N_TEST, SEED)
    assert meta["domains"] == list(DOMAINS) and meta["generator_version"]
    assert read_ground_truth(tmp_path) is None, "no sidecar must mean None (real data)"


def test_resimulating_replaces_a_previous_simulation_but_never_real_data(tmp_path):
    root = simulate(tmp_path / "sim", n_train=4, n_test=6, domains=["A", "B"], seed=3)
    simulate(root, n_train=3, n_test=2, domains=["B"], seed=3)
    assert not (root / "domain_A").exists(), "stale domain of the previous simulation left behind"
    assert len(list((root / "domain_B" / "test" / "good").glob("*.tiff"))) == 2, "stale test files left behind"
    assert len(read_ground_truth(root)) == 4
    real = tmp_path / "real"
    (real / "domain_C" / "train" / "good").mkdir(parents=True)
    with pytest.raises(FileExistsError):
        simulate(real, n_train=2, n_test=2, domains=["C"])
