"""Canary weights and verdicts: exact shares whatever the replica counts, thresholds."""

from __future__ import annotations

import pytest
from salt.exceptions import CommandExecutionError

from tests.unit.conftest import load

canary = load("modules", "cabify_canary")
stack_pillar = load("modules", "stack_pillar")


@pytest.mark.parametrize(
    ("weight", "stable", "canaries", "expected"),
    [(20, 3, 1, (4, 3)), (20, 2, 2, (4, 1)), (50, 3, 1, (1, 3)), (10, 3, 1, (3, 1))],
)
def test_weights_give_the_share_exactly(weight, stable, canaries, expected):
    found = canary.weights(weight, stable, canaries)
    assert (found["stable"], found["canary"]) == expected
    assert found["share"] == pytest.approx(weight, abs=0.01)


@pytest.mark.parametrize("weight", [1, 5, 33, 66.6, 95])
@pytest.mark.parametrize(("stable", "canaries"), [(1, 1), (3, 1), (5, 2), (10, 1)])
def test_weights_stay_within_a_tenth_of_a_point(weight, stable, canaries):
    found = canary.weights(weight, stable, canaries)
    assert 1 <= found["stable"] <= 256 and 1 <= found["canary"] <= 256
    assert found["share"] == pytest.approx(weight, abs=0.1)


@pytest.mark.parametrize(("weight", "stable", "canaries"), [(0, 3, 1), (100, 3, 1), (20, 0, 1), (20, 3, 0)])
def test_weights_refuse_what_cannot_be(weight, stable, canaries):
    with pytest.raises(CommandExecutionError):
        canary.weights(weight, stable, canaries)


ANALYSIS = {"max_error_rate": 0.05, "max_p99_ms": 500, "min_requests": 20}


def figures(requests, errors, p99):
    rate = errors / requests if requests else 0.0
    return {"canary": {"requests": requests, "errors": errors, "error_rate": rate, "p99_ms": p99}}


def test_judge_breaks_on_errors_or_latency_only_with_enough_requests():
    assert canary._judge(figures(100, 1, 20), ANALYSIS) is None
    assert "error rate" in canary._judge(figures(100, 30, 20), ANALYSIS)
    assert "p99" in canary._judge(figures(100, 0, 900), ANALYSIS)
    assert canary._judge(figures(5, 5, 900), ANALYSIS) is None  # too few: inconclusive, not broken


@pytest.mark.parametrize(
    ("steps", "problem"),
    [
        ([], "non-empty list"),
        ([{"weight": 10}], "exactly weight and pause"),
        ([{"weight": 0, "pause": 5}], "above 0 and below 100"),
        ([{"weight": 100, "pause": 5}], "above 0 and below 100"),
        ([{"weight": 10, "pause": -1}], "pause must be seconds"),
    ],
)
def test_bad_canary_steps_are_named(steps, problem):
    assert problem in stack_pillar._canary_steps(steps)


def test_good_canary_steps_pass():
    assert stack_pillar._canary_steps([{"weight": 10, "pause": 30}, {"weight": 50.5, "pause": 0}]) is None


desired = load("beacons", "cabify_desired")


@pytest.mark.parametrize(
    ("value", "asked"),
    [
        ("3", {"version": "3"}),
        ('{"version": "3", "strategy": "canary"}', {"version": "3", "strategy": "canary"}),
        ('{"version": 4}', {"version": "4", "strategy": "rolling"}),
        ('{"strategy": "canary"}', None),
        ("{not json", None),
    ],
)
def test_desired_version_is_a_version_or_json_naming_the_strategy(value, asked):
    assert desired._asked(value) == asked
