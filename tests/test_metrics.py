"""Metrics checked against values worked out by hand on tiny arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hdmap.metrics import METRIC_KEYS, THRESHOLD_METHODS, calibrate_threshold, evaluate

# Base fixture: 8 test images.
#   idx  score  label  condition
#    0    0.1     0    cold
#    1    0.5     0    cold
#    2    0.3     1    cold
#    3    0.8     1    cold
#    4    0.2     0    warm
#    5    0.4     0    warm
#    6    0.6     1    warm
#    7    0.9     1    warm
SCORES = [0.1, 0.5, 0.3, 0.8, 0.2, 0.4, 0.6, 0.9]
LABELS = [0, 0, 1, 1, 0, 0, 1, 1]
CONDS = ["cold", "cold", "cold", "cold", "warm", "warm", "warm", "warm"]
# val_max -> threshold 0.45
VAL = [0.1, 0.2, 0.3, 0.45]


def base(**kw):
    kw.setdefault("val_scores", VAL)
    kw.setdefault("threshold_method", "val_max")
    return evaluate(SCORES, LABELS, CONDS, **kw)


# --------------------------------------------------------------------------- schema


def test_keys_exact_and_ordered_and_no_nan():
    r = base()
    assert tuple(r) == METRIC_KEYS
    assert len(set(METRIC_KEYS)) == len(METRIC_KEYS)
    for k, v in r.items():
        assert v is None or (isinstance(v, float) and not math.isnan(v)), k


def test_all_keys_present_even_with_minimal_input():
    r = evaluate([0.1, 0.2], [0, 0], val_scores=[0.3])
    assert tuple(r) == METRIC_KEYS


# --------------------------------------------------------------------------- AUROC


def test_image_auroc_by_pair_counting():
    # goods {0.1, 0.5, 0.2, 0.4}, faults {0.3, 0.8, 0.6, 0.9}
    # fault 0.3 beats goods 0.1, 0.2           -> 2
    # fault 0.6 beats all 4 goods               -> 4
    # fault 0.8 beats all 4 goods               -> 4
    # fault 0.9 beats all 4 goods               -> 4
    # correctly ordered pairs 14 / (4*4 = 16)   -> 0.875
    assert base()["image_auroc"] == pytest.approx(14 / 16)


def test_auroc_ties_count_half():
    # goods {0.2, 0.5}, faults {0.5, 0.9}: pairs (0.5f,0.2g)=1, (0.5f,0.5g)=tie 0.5,
    # (0.9f,0.2g)=1, (0.9f,0.5g)=1 -> 3.5 / 4 = 0.875
    r = evaluate([0.2, 0.5, 0.5, 0.9], [0, 0, 1, 1], val_scores=[0.0])
    assert r["image_auroc"] == pytest.approx(3.5 / 4)


def test_auroc_per_condition():
    r = base()
    # cold: goods {0.1, 0.5}, faults {0.3, 0.8}
    #   0.3>0.1 yes, 0.3>0.5 no, 0.8>0.1 yes, 0.8>0.5 yes -> 3/4
    assert r["auroc_cold"] == pytest.approx(0.75)
    # warm: goods {0.2, 0.4}, faults {0.6, 0.9}: all 4 pairs ordered -> 4/4
    assert r["auroc_warm"] == pytest.approx(1.0)


def test_cross_condition_auroc():
    # cold goods {0.1, 0.2}, cold faults {0.3, 0.6}, warm goods {0.5, 0.7}, warm faults {0.8, 0.15}
    scores = [0.1, 0.2, 0.3, 0.6, 0.5, 0.7, 0.8, 0.15]
    labels = [0, 0, 1, 1, 0, 0, 1, 1]
    r = evaluate(scores, labels, CONDS, val_scores=VAL)
    assert r["auroc_cold"] == pytest.approx(4 / 4)  # 0.3 and 0.6 beat 0.1 and 0.2
    assert r["auroc_warm"] == pytest.approx(2 / 4)  # 0.8 beats 0.5, 0.7; 0.15 beats neither
    # cold faults vs warm goods: 0.3 beats neither 0.5 nor 0.7; 0.6 beats 0.5 only -> 1/4
    assert r["auroc_cold_fault_vs_warm_good"] == pytest.approx(1 / 4)
    # warm faults vs cold goods: 0.8 beats 0.1, 0.2; 0.15 beats 0.1 only -> 3/4
    assert r["auroc_warm_fault_vs_cold_good"] == pytest.approx(3 / 4)
    # no warm goods: cold faults have nothing to be ranked against
    r = evaluate(scores[:4] + [0.8, 0.15], labels[:4] + [1, 1], CONDS[:4] + ["warm"] * 2, val_scores=VAL)
    assert r["auroc_cold_fault_vs_warm_good"] is None
    assert r["auroc_warm_fault_vs_cold_good"] == pytest.approx(3 / 4)


# --------------------------------------------------------------------------- thresholded


def test_threshold_metrics_at_known_threshold():
    r = base()
    # threshold = max(VAL) = 0.45; predicted fault = score > 0.45
    assert r["threshold"] == pytest.approx(0.45)
    # idx: 0 g 0.1 TN | 1 g 0.5 FP | 2 f 0.3 FN | 3 f 0.8 TP
    #      4 g 0.2 TN | 5 g 0.4 TN | 6 f 0.6 TP | 7 f 0.9 TP
    # TP=3 FP=1 FN=1 TN=3
    assert r["accuracy"] == pytest.approx(6 / 8)  # (TP+TN)/8
    assert r["precision"] == pytest.approx(3 / 4)  # TP/(TP+FP)
    assert r["recall"] == pytest.approx(3 / 4)  # TP/(TP+FN)
    assert r["f1"] == pytest.approx(0.75)  # 2*0.75*0.75/(0.75+0.75)


def test_precision_recall_f1_unequal():
    # threshold = max([0.25]) = 0.25; scores 0.1g 0.3g 0.4f 0.2f 0.6f
    # preds: 0.1 no(TN) 0.3 yes(FP) 0.4 yes(TP) 0.2 no(FN) 0.6 yes(TP)
    # TP=2 FP=1 FN=1 TN=1
    r = evaluate([0.1, 0.3, 0.4, 0.2, 0.6], [0, 0, 1, 1, 1], val_scores=[0.25], threshold_method="val_max")
    assert r["accuracy"] == pytest.approx(3 / 5)
    assert r["precision"] == pytest.approx(2 / 3)
    assert r["recall"] == pytest.approx(2 / 3)
    assert r["f1"] == pytest.approx(2 / 3)  # 2*(2/3)*(2/3)/(4/3)


def test_zero_division_gives_zero_not_nan():
    # threshold 10 > every score -> nothing predicted fault: TP=FP=0 -> precision 0/0 -> 0
    r = evaluate([0.1, 0.9], [0, 1], val_scores=[10.0], threshold_method="val_max")
    assert r["precision"] == 0.0
    assert r["recall"] == 0.0
    assert r["f1"] == 0.0
    assert r["accuracy"] == pytest.approx(0.5)


def test_score_equal_to_threshold_is_good():
    # strict ">" : a score exactly at the threshold is predicted good
    r = evaluate([0.5, 0.5], [0, 1], val_scores=[0.5], threshold_method="val_max")
    assert r["recall"] == 0.0
    assert r["accuracy"] == pytest.approx(0.5)


def test_accuracy_per_condition():
    r = base()
    # cold at 0.45: 0.1g TN, 0.5g FP, 0.3f FN, 0.8f TP -> 2/4
    assert r["accuracy_cold"] == pytest.approx(0.5)
    # warm at 0.45: 0.2g TN, 0.4g TN, 0.6f TP, 0.9f TP -> 4/4
    assert r["accuracy_warm"] == pytest.approx(1.0)


# --------------------------------------------------------------------------- TPR at FPR


def test_tpr_at_fpr_small_example():
    # 4 goods -> FPR moves in steps of 0.25, so both targets only admit FPR = 0 points.
    # descending: 0.9f 0.8f 0.6f 0.5g ... -> at FPR=0 the TPR reaches 3/4
    r = base()
    assert r["tpr_at_fpr_1pct"] == pytest.approx(0.75)
    assert r["tpr_at_fpr_5pct"] == pytest.approx(0.75)


def test_tpr_at_fpr_1_vs_5_pct():
    # 20 goods scored 1..20 -> each good adds FPR 1/20 = 0.05
    # faults 25, 19.5, 10.5, 0.5 -> each fault adds TPR 0.25
    # descending: 25f (fpr 0, tpr .25), 20g (.05, .25), 19.5f (.05, .5), 19g (.10, .5) ...
    # FPR<=0.01 -> only FPR=0 points -> max TPR 0.25
    # FPR<=0.05 -> includes (0.05, 0.5)  -> max TPR 0.5
    goods = list(range(1, 21))
    faults = [25, 19.5, 10.5, 0.5]
    r = evaluate(goods + faults, [0] * 20 + [1] * 4, val_scores=[0.0])
    assert r["tpr_at_fpr_1pct"] == pytest.approx(0.25)
    assert r["tpr_at_fpr_5pct"] == pytest.approx(0.5)


def test_tpr_at_fpr_keeps_collinear_roc_points():
    # 100 goods, 3 faults. fault 0.99 alone on top; then two tied groups of (1 good, 1 fault)
    # at 0.98 and 0.97; the other 98 goods lower.
    # ROC points: (0, 1/3), (0.01, 2/3), (0.02, 1). These are collinear, so sklearn's default
    # drop_intermediate=True would drop (0.01, 2/3); the convention must still find it.
    # FPR<=0.01 -> 2/3 ; FPR<=0.05 -> 1
    goods = [0.98, 0.97] + list(np.linspace(0.0, 0.5, 98))
    faults = [0.99, 0.98, 0.97]
    r = evaluate(goods + faults, [0] * 100 + [1] * 3, val_scores=[0.0])
    assert r["tpr_at_fpr_1pct"] == pytest.approx(2 / 3)
    assert r["tpr_at_fpr_5pct"] == pytest.approx(1.0)


# --------------------------------------------------------------------------- oracle


def test_oracle_accuracy():
    # sorted: 0.1g 0.2g 0.3f 0.4g 0.5g 0.6f 0.8f 0.9f; predict fault iff score > t
    # t<0.1: TN0 TP4 -> 4/8 | t=0.1: 1+4=5/8 | t=0.2: 2+4=6/8 | t=0.3: 2+3=5/8
    # t=0.4: 3+3=6/8 | t=0.5: 4+3=7/8 | t=0.6: 4+2=6/8 | t=0.8: 5/8 | t=0.9: 4/8
    r = base()
    assert r["oracle_accuracy"] == pytest.approx(7 / 8)
    assert r["oracle_threshold"] == pytest.approx(0.5)
    assert r["oracle_accuracy"] >= r["accuracy"]


def test_oracle_can_predict_everything_fault():
    # all faults: best cut is below the minimum (everything fault) -> accuracy 1
    r = evaluate([0.3, 0.1, 0.2], [1, 1, 1], val_scores=[5.0])
    assert r["oracle_accuracy"] == pytest.approx(1.0)
    assert r["oracle_threshold"] < 0.1


# --------------------------------------------------------------------------- gating


def test_gating_accuracy():
    # one of 8 gate predictions wrong (idx 3: true cold, predicted warm) -> 7/8
    gate = ["cold", "cold", "cold", "warm", "warm", "warm", "warm", "warm"]
    assert base(gate_pred=gate)["gating_accuracy"] == pytest.approx(7 / 8)


def test_gating_none_without_gate():
    assert base()["gating_accuracy"] is None


# --------------------------------------------------------------------------- severity


def test_severity_mae_and_spearman():
    # only faults (idx 2,3,6,7) have ground truth; goods are NaN and must be ignored
    nan = float("nan")
    sev_true = [nan, nan, 0.2, 0.4, nan, nan, 0.6, 0.8]
    sev_pred = [5.0, 5.0, 0.1, 0.5, 9.0, 9.0, 0.9, 0.7]
    # MAE = (|0.1-0.2| + |0.5-0.4| + |0.9-0.6| + |0.7-0.8|) / 4 = (0.1+0.1+0.3+0.1)/4 = 0.15
    # ranks true 1,2,3,4 ; pred (0.1,0.5,0.9,0.7) -> 1,2,4,3 ; d = 0,0,-1,1 ; sum d^2 = 2
    # rho = 1 - 6*2 / (4*(16-1)) = 1 - 12/60 = 0.8
    r = base(severity_pred=sev_pred, severity_true=sev_true)
    assert r["severity_mae"] == pytest.approx(0.15)
    assert r["severity_spearman"] == pytest.approx(0.8)


def test_severity_spearman_none_cases():
    nan = float("nan")
    # only 2 points with ground truth -> MAE defined ((0.1+0.1)/2 = 0.1), Spearman None
    r = base(severity_pred=[0] * 6 + [0.5, 0.7], severity_true=[nan] * 6 + [0.6, 0.8])
    assert r["severity_mae"] == pytest.approx(0.1)
    assert r["severity_spearman"] is None
    # constant prediction over 4 points -> Spearman undefined -> None
    r = base(severity_pred=[0.5] * 8, severity_true=[nan, nan, 0.2, 0.4, nan, nan, 0.6, 0.8])
    # MAE = (0.3+0.1+0.1+0.3)/4 = 0.2
    assert r["severity_mae"] == pytest.approx(0.2)
    assert r["severity_spearman"] is None
    # no ground truth at all -> both None
    r = base(severity_pred=[0.5] * 8, severity_true=[nan] * 8)
    assert r["severity_mae"] is None and r["severity_spearman"] is None
    # not given -> both None
    r = base()
    assert r["severity_mae"] is None and r["severity_spearman"] is None


def test_score_severity_spearman_needs_only_the_prediction():
    # scores 0.1 0.5 0.3 0.8 0.2 0.4 0.6 0.9 -> ranks 1 5 3 7 2 4 6 8; pred ranks 1 5 3 6 2 4 8 7: d^2 sum = 6
    # rho = 1 - 6*6 / (8*63) = 1 - 36/504
    pred = [0.0, 0.4, 0.2, 0.6, 0.1, 0.3, 0.9, 0.7]
    r = base(severity_pred=pred)
    assert r["score_severity_spearman"] == pytest.approx(1 - 36 / 504)
    assert r["severity_mae"] is None and r["severity_spearman"] is None  # no ground truth: those stay None
    assert base(severity_pred=[0.2] * 8)["score_severity_spearman"] is None  # constant prediction: undefined
    assert base()["score_severity_spearman"] is None  # no severity output


# --------------------------------------------------------------------------- thresholds


# classic set: mean 5, population std 2
VAL8 = [2, 4, 4, 4, 5, 5, 7, 9]


def test_threshold_methods():
    assert THRESHOLD_METHODS == ("val_percentile", "val_max", "val_mean_std")
    # 99th percentile, linear: position 0.99*(8-1) = 6.93 -> 7 + 0.93*(9-7) = 8.86
    assert calibrate_threshold(VAL8) == pytest.approx(8.86)
    # 50th: position 3.5 -> 4 + 0.5*(5-4) = 4.5
    assert calibrate_threshold(VAL8, "val_percentile", percentile=50) == pytest.approx(4.5)
    assert calibrate_threshold(VAL8, "val_max") == pytest.approx(9.0)
    # mean 40/8 = 5 ; squared deviations 9+1+1+1+0+0+4+16 = 32 ; var 32/8 = 4 ; std 2
    assert calibrate_threshold(VAL8, "val_mean_std") == pytest.approx(5 + 3 * 2)
    assert calibrate_threshold(VAL8, "val_mean_std", n_std=1.5) == pytest.approx(5 + 1.5 * 2)


def test_evaluate_uses_threshold_method_and_defaults():
    # default = val_percentile 99 -> 8.86 ; n_val = 8
    r = evaluate([1.0, 10.0], [0, 1], val_scores=VAL8)
    assert r["threshold"] == pytest.approx(8.86)
    assert r["accuracy"] == pytest.approx(1.0)
    assert r["n_val"] == 8.0
    r = evaluate([1.0, 10.0], [0, 1], val_scores=VAL8, threshold_method="val_mean_std", threshold_n_std=1.0)
    assert r["threshold"] == pytest.approx(7.0)


def test_threshold_independent_of_test_labels():
    flipped = [1 - y for y in LABELS]
    for method in THRESHOLD_METHODS:
        a = evaluate(SCORES, LABELS, CONDS, val_scores=VAL, threshold_method=method)
        b = evaluate(SCORES, flipped, CONDS, val_scores=VAL, threshold_method=method)
        c = evaluate(SCORES, [0] * 8, CONDS, val_scores=VAL, threshold_method=method)
        assert a["threshold"] == b["threshold"] == c["threshold"]
        # ... and it equals calibration on the validation scores alone
        assert a["threshold"] == calibrate_threshold(VAL, method)


# --------------------------------------------------------------------------- None cases


def test_single_class_in_condition():
    # warm has only goods -> auroc_warm undefined, accuracy_warm still defined
    conds = ["cold"] * 4 + ["warm"] * 4
    labels = [0, 1, 1, 1, 0, 0, 0, 0]
    scores = [0.1, 0.6, 0.7, 0.2, 0.3, 0.5, 0.05, 0.9]
    r = evaluate(scores, labels, conds, val_scores=[0.4], threshold_method="val_max")
    assert r["auroc_warm"] is None
    # warm at 0.4: 0.3 TN, 0.5 FP, 0.05 TN, 0.9 FP -> 2/4
    assert r["accuracy_warm"] == pytest.approx(0.5)
    # cold: good 0.1 vs faults 0.6, 0.7, 0.2 -> all 3 pairs ordered -> 1.0
    assert r["auroc_cold"] == pytest.approx(1.0)
    # cold at 0.4: 0.1 TN, 0.6 TP, 0.7 TP, 0.2 FN -> 3/4
    assert r["accuracy_cold"] == pytest.approx(0.75)


def test_condition_absent_and_no_conditions():
    r = evaluate([0.1, 0.9], [0, 1], ["cold", "cold"], val_scores=[0.5])
    assert r["accuracy_cold"] == pytest.approx(1.0)
    assert r["accuracy_warm"] is None and r["auroc_warm"] is None
    r = evaluate([0.1, 0.9], [0, 1], val_scores=[0.5])
    cross = ("auroc_cold_fault_vs_warm_good", "auroc_warm_fault_vs_cold_good")
    for k in ("accuracy_cold", "accuracy_warm", "auroc_cold", "auroc_warm", *cross, "gating_accuracy"):
        assert r[k] is None, k


def test_single_class_overall():
    r = evaluate([0.1, 0.2, 0.3], [0, 0, 0], val_scores=[0.25], threshold_method="val_max")
    assert r["image_auroc"] is None
    assert r["tpr_at_fpr_1pct"] is None and r["tpr_at_fpr_5pct"] is None
    assert r["accuracy"] == pytest.approx(2 / 3)  # 0.3 > 0.25 is a false alarm
    assert r["oracle_accuracy"] == pytest.approx(1.0)  # cut at 0.3: all good
    assert r["oracle_threshold"] == pytest.approx(0.3)
    assert (r["n_test"], r["n_test_good"], r["n_test_fault"], r["n_val"]) == (3.0, 3.0, 0.0, 1.0)


def test_counts():
    r = base()
    assert (r["n_test"], r["n_test_good"], r["n_test_fault"], r["n_val"]) == (8.0, 4.0, 4.0, 4.0)


def test_accepts_numpy_and_bool_labels():
    r = evaluate(
        np.array(SCORES),
        np.array(LABELS, dtype=bool),
        np.array(CONDS),
        val_scores=np.array(VAL),
        threshold_method="val_max",
    )
    assert r == base()


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(scores=[0.1, 0.2], labels=[0, 1, 1]), "labels has length 3"),
        (dict(labels=[0, 2]), "labels must be 0"),
        (dict(labels=[0, float("nan")]), "labels"),
        (dict(scores=[0.1, float("nan")]), "scores contains 1 non-finite"),
        (dict(scores=[0.1, float("inf")]), "scores contains 1 non-finite"),
        (dict(scores=[], labels=[]), "scores must be non-empty"),
        (dict(val_scores=[]), "val_scores must be non-empty"),
        (dict(val_scores=[float("nan")]), "val_scores contains"),
        (dict(conditions=["cold"]), "conditions has length 1"),
        (dict(conditions=["cold", "hot"]), "conditions must contain only"),
        (dict(conditions=["cold", "warm"], gate_pred=["cold"]), "gate_pred has length 1"),
        (dict(gate_pred=["cold", "warm"]), "gate_pred needs conditions"),
        (dict(severity_true=[0.1, 0.2]), "needs severity_pred"),
        (dict(severity_pred=[0.1], severity_true=[0.1, 0.2]), "severity_pred has length 1"),
        (dict(severity_pred=[float("nan"), 0.2], severity_true=[0.1, 0.2]), "severity_pred is NaN"),
        (dict(threshold_method="bogus"), "unknown threshold method"),
        (dict(threshold_percentile=101.0), "percentile must be in"),
        (dict(scores=[[0.1, 0.2]], labels=[[0, 1]]), "scores must be 1-D"),
    ],
)
def test_validation_errors(kwargs, match):
    args = dict(scores=[0.1, 0.9], labels=[0, 1], conditions=None, val_scores=[0.5])
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        evaluate(args.pop("scores"), args.pop("labels"), args.pop("conditions"), **args)


def test_calibrate_threshold_errors():
    with pytest.raises(ValueError, match="non-empty"):
        calibrate_threshold([])
    with pytest.raises(ValueError, match="unknown threshold method"):
        calibrate_threshold([1.0], "test_optimal")
