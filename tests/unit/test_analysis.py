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


STATS = """# pxname,svname,status,addr,hrsp_1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,hrsp_other,wretr,eresp
cabify,FRONTEND,OPEN,,0,900,0,0,0,0,,
cabify,stable1,UP,10.213.0.11:32768,0,400,0,1,0,0,0,0
cabify,stable2,UP,10.213.0.12:32768,0,380,0,0,2,0,1,0
cabify,stable3,MAINT,,0,0,0,0,0,0,0,0
cabify,canary1,DOWN,10.213.0.13:32770,0,90,0,0,7,0,0,1
cabify,canary2,MAINT,,0,50,0,0,0,0,0,0
cabify,BACKEND,UP,,0,920,0,1,9,0,1,1
shop,stable1,UP,10.213.0.11:32800,0,10,0,0,0,0,0,0
"""


def test_the_stats_csv_gives_each_server_row_of_the_backend():
    rows = analysis.stat_rows(STATS, "cabify")
    assert [r["svname"] for r in rows] == ["stable1", "stable2", "stable3", "canary1", "canary2"]
    assert [analysis.role_of(r) for r in rows] == ["stable"] * 3 + ["canary"] * 2


def test_role_counters_count_retried_attempts_and_response_errors_as_errors():
    counters = analysis.role_counters(analysis.stat_rows(STATS, "cabify"))
    assert counters == {
        "stable": {"requests": 784, "errors": 3},
        "canary": {"requests": 148, "errors": 8},
    }


def test_a_canary_held_down_with_an_address_is_out_and_an_empty_slot_is_not():
    assert analysis.canaries_out(analysis.stat_rows(STATS, "cabify")) == ["canary1 10.213.0.13:32770"]
    assert analysis.canaries_out(analysis.stat_rows(STATS, "shop")) == []
