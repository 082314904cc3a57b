"""Prediction intervals (conformalized quantile regression): the finite-sample level and the bounds by hand, the
calibration on a frame whose answer is known, and the coverage on the real month after the calibration month."""

from __future__ import annotations

import math

import numpy as np
import pytest
from deltalake import DeltaTable

from jobs.models import interval as interval_model
from jobs.models.inputs import TARGET
from jobs.platform import lakehouse
from jobs.training import intervals

DEFAULT_TIER = "unit"  # tests without a tier marker of their own


def test_the_finite_sample_level_is_ceil_of_coverage_times_n_plus_one_over_n():
    assert interval_model.finite_sample_level(9, 0.8) == pytest.approx(8 / 9)
    assert interval_model.finite_sample_level(99, 0.8) == pytest.approx(80 / 99)
    assert interval_model.finite_sample_level(4, 0.8) == 1.0  # too few rows for anything but the largest score
    assert interval_model.finite_sample_level(1, 0.8) == 1.0
    with pytest.raises(ValueError, match="at least one calibration row"):
        interval_model.finite_sample_level(0, 0.8)
    assert interval_model.quantile_alphas(0.8) == pytest.approx((0.1, 0.9))


def test_bounds_move_by_the_offset_on_the_log_scale_never_cross_never_go_below_zero_and_hold_the_point():
    rng = np.random.default_rng(7)
    q_lo, q_hi = rng.normal(2.0, 0.5, 1000), rng.normal(2.6, 0.5, 1000)  # raw quantiles may cross
    point = np.expm1(rng.normal(2.3, 0.6, 1000))
    for offset in (-0.4, 0.0, 0.25):
        lo, hi = interval_model.interval_bounds(point, q_lo, q_hi, offset)
        assert (lo >= 0).all() and (lo <= point).all() and (point <= hi).all()
    lo, hi = interval_model.interval_bounds([10.0], [math.log1p(8.0)], [math.log1p(12.0)], math.log(1.5))
    assert lo[0] == pytest.approx(9 / 1.5 - 1) and hi[0] == pytest.approx(13 * 1.5 - 1)  # multiplicative on 1 + min
    lo, hi = interval_model.interval_bounds([0.5], [math.log1p(1.0)], [math.log1p(2.0)], 5.0)
    assert lo[0] == 0.0  # a wide offset stops at zero minutes
    lo, hi = interval_model.interval_bounds([3.0], [math.log1p(2.0)], [math.log1p(4.0)], -2.0)
    assert lo[0] <= 3.0 <= hi[0]  # narrowed past each other: uncrossed, and the point stays inside


@pytest.mark.spark
def test_calibration_takes_the_finite_sample_quantile_of_the_conformity_scores(spark):
    # Raw bounds [0, 0] on the log scale and log1p(duration) = i/100: trip i scores i/100 (outside by that much).
    rows = [(math.expm1(i / 100), 0.0, 0.0) for i in range(1, 100)]
    scored = spark.createDataFrame(rows, f"{TARGET} double, {interval_model.Q_LO} double, {interval_model.Q_HI} double")
    offset, facts = intervals.calibrate(scored, 0.8)
    assert offset == pytest.approx(0.80)  # the 80th of 99 scores: ceil(0.8 * 100) = 80
    assert facts == {
        "rows": 99,
        "level": pytest.approx(80 / 99),
        "raw_coverage": 0.0,
        "coverage": pytest.approx(80 / 99),
    }


@pytest.mark.integration
def test_the_80_percent_interval_covers_80_percent_of_the_next_months_trips(golden, spark):
    s = golden.settings
    name = s.registered_model("green")
    champion = golden.client().get_model_version_by_alias(name, "champion")
    assert champion.tags["interval_calibration_month"] == "2023-01"  # the validation month: unseen by the quantiles
    assert float(champion.tags["interval_coverage"]) == 0.8
    trained = golden.summaries["train"]["interval"]
    assert trained["uri"] == champion.tags["interval_uri"] and trained["calibration_month"] == "2023-01"

    preds = DeltaTable(lakehouse.PREDICTIONS.path(s)).to_pandas(filters=[("month", "=", "2023-02")])
    lo, point, hi = preds.predicted_p10_min, preds.predicted_duration_min, preds.predicted_p90_min
    assert preds[["predicted_p10_min", "predicted_p90_min"]].notna().all().all()
    assert (lo >= 0).all() and (lo <= point).all() and (point <= hi).all()  # rounded to 3 decimals, all three
    known = preds[preds.in_training_range]
    inside = (known.actual_duration_min >= known.predicted_p10_min) & (
        known.actual_duration_min <= known.predicted_p90_min
    )
    coverage, width = inside.mean(), (known.predicted_p90_min - known.predicted_p10_min).mean()
    assert 0.78 <= coverage <= 0.82, coverage
    assert golden.summaries["score"]["interval_coverage_in_training_range"] == pytest.approx(coverage, abs=1e-3)
    assert golden.summaries["score"]["interval_width_in_training_range"] == pytest.approx(width, abs=1e-2)

    # What the calibration changed: the raw quantile models' own coverage of the same trips.
    interval = interval_model.load_interval(champion.tags["interval_uri"])
    feats = lakehouse.read(spark, s, lakehouse.FEATURES).where("service = 'green' AND month = '2023-02'")
    raw = intervals.with_log_quantiles(feats.where("in_training_range"), interval.lower, interval.upper)
    q = raw.toPandas()
    y = np.log1p(q[TARGET])
    raw_coverage = ((y >= q[interval_model.Q_LO]) & (y <= q[interval_model.Q_HI])).mean()
    print(
        f"2023-02, {len(known)} trips of 1-60 min: raw quantile coverage {raw_coverage:.4f}, conformal "
        f"{coverage:.4f} (offset {interval.offset:+.4f} on log1p minutes), mean width {width:.2f} min"
    )
    assert raw_coverage != pytest.approx(coverage, abs=1e-4)  # the offset moved the bounds
