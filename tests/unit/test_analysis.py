"""The canary analysis: figures per role from HAProxy's counters, the measured share
beside the target, and the verdict of a step."""

from __future__ import annotations

from tests.unit.conftest import load

analysis = load("utils", "cabify_analysis")

RULES = {"max_error_rate": 0.05, "max_p99_ms": 500, "min_requests": 20}


def numbers(requests, errors, p99):
    rate = errors / requests if requests else 0.0
    return {"canary": {"requests": requests, "errors": errors, "error_rate": rate, "p99_ms": p99}}


def test_judge_breaks_on_errors_or_latency_only_with_enough_requests():
    assert analysis.judge(numbers(100, 1, 20), RULES) is None
    assert "error rate" in analysis.judge(numbers(100, 30, 20), RULES)
    assert "p99" in analysis.judge(numbers(100, 0, 900), RULES)
    assert analysis.judge(numbers(5, 5, 900), RULES) is None  # too few: inconclusive, not broken
    assert not analysis.conclusive(numbers(5, 5, 900), RULES)


def test_figures_count_from_the_baseline_and_measure_the_share():
    counters = {"stable": {"requests": 900, "errors": 0}, "canary": {"requests": 300, "errors": 3}}
    baseline = {"stable": {"requests": 100, "errors": 0}, "canary": {"requests": 100, "errors": 1}}
    out = analysis.figures(counters, baseline, {"canary": [1, 2, 3, 40]}, target_share=20)
    assert out["stable"]["requests"] == 800 and out["canary"]["requests"] == 200
    assert out["canary"]["errors"] == 2 and out["canary"]["error_rate"] == 0.01
    assert out["canary"]["p99_ms"] == 40 and out["stable"]["p99_ms"] is None
    assert out["share"] == {"target": 20, "measured": 20.0}


def test_percentile_of_nothing_is_none():
    assert analysis.percentile([], 0.99) is None
    assert analysis.percentile([1.0, 2.0], 0.5) == 2.0
