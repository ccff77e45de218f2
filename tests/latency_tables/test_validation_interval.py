"""The validation's within-+-10% share comes with its 95% Wilson score interval, checked against hand values."""

import numpy as np
import pytest

from latency_tables.validation import describe_share, share_interval, wilson_interval, within_10_interval
from search_spaces.errors import HwnasError


def test_95_of_100_by_hand():
    # p = 0.95, z^2 = 3.841459: centre (0.95 + 0.019207) / 1.038415 = 0.933352,
    # half 1.959964 / 1.038415 * sqrt(0.95 * 0.05 / 100 + 3.841459 / 40000) = 0.045103
    low, high = wilson_interval(95, 100)
    assert low == pytest.approx(0.888250, abs=2e-6) and high == pytest.approx(0.978456, abs=2e-6)


def test_the_ends_have_closed_forms():
    z2 = 1.959963984540054 ** 2
    low, high = wilson_interval(100, 100)  # all within: the lower end is n / (n + z^2)
    assert high == 1.0 and low == pytest.approx(100 / (100 + z2), rel=1e-12)
    low, high = wilson_interval(0, 10)  # none: the upper end is z^2 / (n + z^2)
    assert low == 0.0 and high == pytest.approx(z2 / (10 + z2), rel=1e-12)
    low, high = wilson_interval(88, 100)  # the imagenet table's check in issue 17: its interval excludes 95%
    assert (round(low, 4), round(high, 4)) == (0.8019, 0.9300)


def test_the_interval_narrows_with_more_subnets_and_holds_the_share():
    for k, n in ((19, 20), (95, 100), (950, 1000)):
        low, high = wilson_interval(k, n)
        assert low < k / n < high
    widths = [high - low for low, high in (wilson_interval(k, n) for k, n in ((19, 20), (95, 100), (950, 1000)))]
    assert widths[0] > widths[1] > widths[2] > 0
    assert widths[1] == pytest.approx(0.978456 - 0.888250, abs=4e-6)  # 100 subnets near 95%: about +-4.5 points


@pytest.mark.parametrize("k, n", [(-1, 10), (11, 10), (0, 0), (True, 10)])
def test_impossible_counts_are_refused(k, n):
    with pytest.raises(HwnasError, match="0 <= successes <= trials"):
        wilson_interval(k, n)


def test_share_interval_counts_the_predictions_within_10_percent():
    measured = np.full(20, 2.0)
    predicted = measured * np.r_[np.full(17, 1.09), 0.901, 0.85, 1.2]  # 18 within, 2 outside
    assert share_interval(measured, predicted) == [round(v, 6) for v in wilson_interval(18, 20)]
    assert share_interval(measured, predicted) == pytest.approx([0.698966, 0.972134], abs=1e-6)  # by hand


def test_describe_share_reads_like_the_issue_and_covers_old_summaries():
    summary = {"within_10": 0.96, "samples": 100}  # stored before intervals were: computed from the count
    assert within_10_interval(summary) == wilson_interval(96, 100)
    assert describe_share(summary) == "96.0% within +-10% (95% CI 90.2-98.4%, 100 subnets)"
    stored = {"within_10": 0.95, "samples": 100, "within_10_ci95": [0.888250, 0.978456]}
    assert describe_share(stored) == "95.0% within +-10% (95% CI 88.8-97.8%, 100 subnets)"
    assert within_10_interval(stored) == (0.888250, 0.978456)


def test_lut_show_prints_the_stored_share_with_its_interval(capsys):
    from latency_tables.table import shipped_tables
    from nas.cli import main

    table = next(p for p in shipped_tables() if p.name == "small-amd-epyc-2c-litert-int8-t1")
    assert main(["lut", "show", str(table)]) == 0
    out, _ = capsys.readouterr()
    # stored: 100 of 100 within +-10% on seed 1; the interval is the closed form n / (n + z^2) .. 1
    assert "seed 1: 100.0% within +-10% (95% CI 96.3-100.0%, 100 subnets); MAPE 1.4%" in out
