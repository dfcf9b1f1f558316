"""The data rules of hdmap/data/layout.py and arrays.py: every broken rule is one error naming its culprit.

Pixel values (NaN/inf, negatives), the non-TIFF entry rule, the cold/warm rule (index rule, data.cold_below,
<root>/conditions.csv), counts against train_shots / val_fraction, and the header-only pre-launch check.
"""

import json

import numpy as np
import pytest
import tifffile

from hdmap.config import ConfigError, load_trial_config
from hdmap.data.arrays import CACHE_ENV, cache_key, check_headers, clear_cache, load_split
from hdmap.data.layout import DataLayoutError, scan_split
from hdmap.data.splits import build_trial_data
from tests.test_data import write_layout

GOOD = "domain_C/test/good"


pytestmark = pytest.mark.usefixtures("fresh_arrays")


@pytest.fixture
def root(tmp_path):
    """domain_C: 6 train, 4 + 4 test files numbered 000000..000003."""
    return write_layout(tmp_path / "r")


def image(value=0.5):
    return np.full((31, 95), value, np.float32)


def rename(folder, mapping):
    for old, new in mapping.items():
        (folder / old).rename(folder / new)


def no_decoding(monkeypatch):
    monkeypatch.setattr(tifffile, "imread", lambda *a, **k: pytest.fail("decoded a file; the check needs none"))


# ---- pixel values


@pytest.mark.parametrize(
    "bad, count, message",
    [
        (np.nan, 40, r"40 non-finite pixel values \(NaN/inf\); HDMAP files must be finite"),
        (np.inf, 3, r"3 non-finite pixel values"),
        (-0.25, 7, r"7 negative pixel values \(min -0\.25\).*data\.allow_negative: true"),
    ],
)
def test_bad_pixel_values_name_file_and_count(root, bad, count, message):
    img = image()
    img.flat[:count] = bad
    tifffile.imwrite(root / GOOD / "000002.tiff", img)
    with pytest.raises(DataLayoutError, match=rf"{GOOD}/000002\.tiff: {message}"):
        load_split(root, "C", "test")


def test_allow_negative_loads_negative_values(root):
    tifffile.imwrite(root / GOOD / "000002.tiff", image(-0.5))
    assert load_split(root, "C", "test", allow_negative=True).images.min() == -0.5
    img = image(-0.5)
    img[0, 0] = np.nan
    tifffile.imwrite(root / GOOD / "000002.tiff", img)
    clear_cache()
    with pytest.raises(DataLayoutError, match="000002.tiff: 1 non-finite"):  # NaN stays an error
        load_split(root, "C", "test", allow_negative=True)


def test_node_cache_never_stores_a_bad_split_nor_serves_negatives_to_a_strict_load(root, tmp_path, monkeypatch):
    cache = tmp_path / "node"
    monkeypatch.setenv(CACHE_ENV, str(cache))
    img = image()
    img[3] = np.nan
    tifffile.imwrite(root / GOOD / "000001.tiff", img)
    with pytest.raises(DataLayoutError, match="000001.tiff: 95 non-finite"):
        load_split(root, "C", "test")
    assert not list(cache.rglob("*.npy")) and not list(cache.rglob("meta.json"))  # nothing committed

    tifffile.imwrite(root / GOOD / "000001.tiff", image(-1.0))
    assert len(load_split(root, "C", "test", allow_negative=True)) == 8  # cached under the permissive rule
    assert len(list(cache.glob("arrays/*/meta.json"))) == 1
    clear_cache()
    with pytest.raises(DataLayoutError, match="000001.tiff: 2945 negative"):
        load_split(root, "C", "test")  # a different key: validated again, not served from the entry above


# ---- entries that are not TIFF files


def test_hidden_files_and_appledouble_are_skipped(root):
    (root / GOOD / "._000001.tiff").write_bytes(b"\x00\x05\x16\x07 AppleDouble resource fork")
    (root / GOOD / ".DS_Store").write_bytes(b"Bud1")
    (root / "domain_C/train/good/.~lock.tmp").write_text("x")
    assert len(load_split(root, "C", "test")) == 8 and len(load_split(root, "C", "train")) == 6


@pytest.mark.parametrize("name", ["notes.txt", "Thumbs.db", "000004.png", "extra"])
def test_other_entries_are_rejected_naming_folder_and_file(root, name):
    path = root / GOOD / name
    path.mkdir() if name == "extra" else path.write_text("x")
    with pytest.raises(DataLayoutError, match=rf"{GOOD}: 1 entries that are not \.tif/\.tiff files \({name}\)"):
        scan_split(root, "C", "test")


def test_train_names_are_free_but_follow_the_suffix_rule(root):
    rename(root / "domain_C/train/good", {"000000.tiff": "run_a.TIF", "000001.tiff": "b.tif"})
    assert len(load_split(root, "C", "train")) == 6
    (root / "domain_C/train/good/readme.md").write_text("x")
    with pytest.raises(DataLayoutError, match=r"train/good: 1 entries .*readme\.md"):
        scan_split(root, "C", "train")


# ---- cold/warm: the index rule, cold_below, conditions.csv


def test_stray_name_in_a_test_folder_is_an_error_saying_how_to_state_the_split(root):
    tifffile.imwrite(root / GOOD / "abc.tiff", image())  # used to flip a warm image to cold silently
    with pytest.raises(
        DataLayoutError,
        match=rf"{GOOD}: test file names must be <digits>\.tiff \(or \.tif\) .*"
        r"found abc\.tiff.*data\.cold_below: K.*conditions\.csv \(columns "
        r"file,condition; e\.g\. domain_C/test/good/abc\.tiff,cold\)",
    ):
        load_split(root, "C", "test")


@pytest.mark.parametrize(
    "mapping, found, missing",
    [
        ({f"{i:06d}.tiff": f"{1000 + i:06d}.tiff" for i in range(4)}, "001000.tiff..001003.tiff", "4 numbers"),
        ({"000001.tiff": "000007.tiff"}, "000000.tiff..000007.tiff", r"1 numbers of 0\.\.3 missing, e\.g\. 1\)"),
    ],
)
def test_numbering_the_index_rule_does_not_assume_is_an_error(root, mapping, found, missing):
    rename(root / GOOD, mapping)
    with pytest.raises(
        DataLayoutError,
        match=rf"{GOOD}: the index rule .* numbered 0\.\.3; found {found} \({missing}"
        r".*data\.cold_below",
    ):
        scan_split(root, "C", "test")


def test_duplicate_numbers_are_an_error(root):
    tifffile.imwrite(root / GOOD / "1.tif", image())
    with pytest.raises(DataLayoutError, match=rf"{GOOD}: number 1 is used by 2 files \(000001\.tiff, 1\.tif\)"):
        scan_split(root, "C", "test", cold_below=2)


def test_cold_below_assigns_by_number_and_allows_gaps(root):
    rename(
        root / GOOD,
        {
            "000000.tiff": "001000.tiff",
            "000001.tiff": "001001.tiff",
            "000002.tiff": "001005.tiff",
            "000003.tiff": "001009.tiff",
        },
    )
    test = load_split(root, "C", "test", cold_below=1002)
    good = [(f.rsplit("/", 1)[1], c) for f, c in zip(test.files, test.conditions) if "/good/" in f]
    assert good == [("001000.tiff", "cold"), ("001001.tiff", "cold"), ("001005.tiff", "warm"), ("001009.tiff", "warm")]
    fault = [c for f, c in zip(test.files, test.conditions) if "/fault/" in f]
    assert fault == ["cold"] * 4  # the same K for every test folder: fault files 0..3 are < 1002


def conditions_csv(root, rows, header="file,condition"):
    (root / "conditions.csv").write_text("\n".join([header, *rows]) + "\n")


def all_rows(root, condition_of=lambda i: "cold" if i % 2 else "warm"):
    return [f"domain_C/test/{sub}/{i:06d}.tiff,{condition_of(i)}" for sub in ("good", "fault") for i in range(4)]


def test_conditions_csv_states_the_split_for_any_names(root):
    rename(root / GOOD, {"000000.tiff": "run-17.tiff"})  # names need not be numbers with a conditions.csv
    rows = all_rows(root)
    rows[0] = "domain_C/test/good/run-17.tiff,cold,a surplus field"
    conditions_csv(root, rows + ["domain_C/train/good/000000.tiff,warm", "domain_A/test/good/000000.tiff,cold"])
    test = load_split(root, "C", "test")
    got = dict(zip(test.files, test.conditions))
    assert got["domain_C/test/good/run-17.tiff"] == "cold"
    assert [got[f"domain_C/test/fault/{i:06d}.tiff"] for i in range(4)] == ["warm", "cold", "warm", "cold"]


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda rows: rows[:-1],
            r"conditions\.csv: no row for 1 test files of .*test/fault \(domain_C/test/fault/000003",
        ),
        (
            lambda rows: rows[:2] + ["domain_C/test/good/000002.tiff,hot"] + rows[3:],
            r"conditions\.csv line 4: condition 'hot' for domain_C/test/good/000002\.tiff; expected cold or warm",
        ),
        (
            lambda rows: rows + ["domain_C/test/good/000009.tiff,cold"],
            r"conditions\.csv line 10: domain_C/test/good/000009\.tiff does not exist",
        ),
        (
            lambda rows: rows + [rows[1]],
            r"conditions\.csv line 10: domain_C/test/good/000001\.tiff already has a row \(line 3\)",
        ),
        (
            lambda rows: rows + ["C/good/000001.tiff,cold"],
            r"conditions\.csv line 10: file 'C/good/000001\.tiff' is not a test",
        ),
    ],
)
def test_conditions_csv_errors_name_the_row(root, edit, message):
    conditions_csv(root, edit(all_rows(root)))
    with pytest.raises(DataLayoutError, match=message):
        load_split(root, "C", "test")


def test_conditions_csv_header_and_cold_below_conflict(root):
    conditions_csv(root, all_rows(root), header="path,state")
    with pytest.raises(DataLayoutError, match=r"conditions\.csv: line 1 must name the columns file,condition"):
        scan_split(root, "C", "test")
    conditions_csv(root, all_rows(root))
    with pytest.raises(DataLayoutError, match=r"conditions\.csv and data\.cold_below=2 both state .* keep one"):
        scan_split(root, "C", "test", cold_below=2)
    assert len(scan_split(root, "C", "train", cold_below=2)) == 6  # train carries no condition: no conflict


def test_node_cache_key_follows_the_conditions(root):
    def key(**kw):
        return cache_key(str(root), "domain_C", "test", scan_split(root, "C", "test", **kw))

    index_rule = key()
    assert key(cold_below=2) == index_rule  # the same conditions, however stated, share an entry
    assert key(cold_below=1) != index_rule
    conditions_csv(root, all_rows(root))
    with_csv = key()
    conditions_csv(root, all_rows(root, lambda i: "cold"))
    assert len({json.dumps(k, sort_keys=True) for k in (index_rule, with_csv, key())}) == 3


def test_cold_below_must_be_a_number_of_files():
    with pytest.raises(ConfigError, match=r"data\.cold_below: .*greater than or equal to 0 \(got -1\)"):
        load_trial_config(None, ["data.cold_below=-1"])


def test_new_data_fields_keep_earlier_trial_ids():
    default = load_trial_config(None, [])
    assert "cold_below" not in default.canonical()["data"] and "allow_negative" not in default.canonical()["data"]
    assert load_trial_config(None, ["data.cold_below=null", "data.allow_negative=false"]).trial_id == default.trial_id
    assert (
        len(
            {
                default.trial_id,
                load_trial_config(None, ["data.cold_below=500"]).trial_id,
                load_trial_config(None, ["data.allow_negative=true"]).trial_id,
            }
        )
        == 3
    )


# ---- counts against train_shots and val_fraction, before any decoding


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["data.train_shots=50"],
            r"data\.train_shots=50 but only 5 images are available in domain_C/train/good after "
            r"holding out 1 for validation \(data\.val_fraction=0\.1\); use at most 5",
        ),
        (
            ["data.train_shots=5", "data.reference_source=test"],
            r"data\.train_shots=5 but only 4 images are available in domain_C/test/good; use at most 4",
        ),
        (
            ["data.val_fraction=0.95"],
            r"data\.val_fraction=0\.95 holds out 6 of the 6 images in domain_C/train/good "
            r"and leaves none to fit on",
        ),
    ],
)
def test_counts_that_cannot_work_are_named_before_decoding(root, monkeypatch, overrides, message):
    cfg = load_trial_config(None, [f"data.root={root}", *overrides]).data
    no_decoding(monkeypatch)
    with pytest.raises(DataLayoutError, match=message):
        build_trial_data(cfg, seed=0)


# ---- header-only pre-launch check


def test_check_headers_passes_good_data_without_decoding(root, monkeypatch):
    monkeypatch.setattr(tifffile.TiffPage, "asarray", lambda *a, **k: pytest.fail("decoded pixel data"))
    no_decoding(monkeypatch)
    for split in ("train", "test"):
        check_headers(root, "C", split, workers=4)


@pytest.mark.parametrize(
    "write, message",
    [
        (lambda p: p.write_bytes(b"not a tiff at all"), "not a readable TIFF"),
        (lambda p: tifffile.imwrite(p, np.zeros((31, 95), np.float64)), "dtype float64, expected float32"),
        (lambda p: tifffile.imwrite(p, np.zeros((31, 96), np.float32)), r"shape \(31, 96\), expected \(31, 95\)"),
        (lambda p: tifffile.imwrite(p, np.zeros((2, 31, 95), np.float32)), r"2 pages \(images\) in one TIFF"),
    ],
)
def test_check_headers_names_the_first_bad_file(root, write, message):
    write(root / "domain_C/test/fault/000002.tiff")
    write(root / "domain_C/test/fault/000003.tiff")
    with pytest.raises(DataLayoutError, match=rf"test/fault/000002\.tiff: {message}"):
        check_headers(root, "C", "test")


def test_check_headers_applies_the_layout_rules(root):
    tifffile.imwrite(root / GOOD / "abc.tiff", image())
    with pytest.raises(DataLayoutError, match="abc.tiff"):
        check_headers(root, "C", "test")
