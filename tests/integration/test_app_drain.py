"""The app's own drain: on SIGTERM /health turns 503, requests in flight finish, and the
process exits as soon as nothing is in flight, at most DRAIN_TIMEOUT later."""

from __future__ import annotations

import json
import threading
import time

import docker
import pytest

from tests.helpers import http, wait_for


@pytest.fixture
def app_replica(highstate):
    """A container of the app's image, outside any pool; DRAIN_TIMEOUT set by the test."""
    client = docker.from_env()
    started = []

    def run(drain_timeout: float):
        container = client.containers.run(
            "cabify-app:1",
            detach=True,
            environment={"DRAIN_TIMEOUT": str(drain_timeout), "APP_VERSION": "1"},
            network="cabify",
            labels={"cabify.test": "drain"},
        )
        started.append(container)
        container.reload()
        address = next(iter(container.attrs["NetworkSettings"]["Networks"].values()))["IPAddress"]
        url = f"http://{address}:8080"
        wait_for(lambda: http("GET", url + "/health")[0] == 200, 20, "the app to answer /health")
        return container, url

    yield run
    for container in started:
        container.remove(force=True)


def _in_background(url: str, timeout: float) -> tuple[threading.Thread, dict]:
    answer: dict = {}

    def get() -> None:
        try:
            answer["got"] = http("GET", url, timeout=timeout)
        except OSError as err:  # a request the drain cut off
            answer["got"] = (None, repr(err))

    thread = threading.Thread(target=get)
    thread.start()
    return thread, answer


def _wait_in_flight(url: str, count: int) -> None:
    wait_for(
        lambda: json.loads(http("GET", url + "/status")[1])["in_flight"] == count,
        5,
        f"{count} request(s) in flight in the app",
    )


def _exited_after(container, since: float, limit: float) -> float:
    wait_for(lambda: (container.reload(), container.status)[1] == "exited", limit, "the app to exit")
    return time.monotonic() - since


def test_sigterm_finishes_requests_in_flight_then_exits_when_idle(app_replica):
    container, url = app_replica(drain_timeout=60)
    request, answer = _in_background(url + "/sleep/2", timeout=30)
    _wait_in_flight(url, 1)
    signalled = time.monotonic()
    container.kill(signal="SIGTERM")
    assert wait_for(lambda: http("GET", url + "/health")[0] == 503, 2, "/health to turn 503 while draining")
    request.join(timeout=30)
    assert answer["got"][0] == 200, f"the request in flight failed: {answer}"
    took = _exited_after(container, signalled, 30)
    # Idle after about 2 s: the app left long before its 60 s cap.
    assert took < 20, f"the app took {took:.1f}s to exit, though idle after its one 2 s request"
    assert container.attrs["State"]["ExitCode"] == 0


def test_drain_timeout_caps_the_drain(app_replica):
    container, url = app_replica(drain_timeout=2)
    request, _ = _in_background(url + "/sleep/120", timeout=150)
    _wait_in_flight(url, 1)
    signalled = time.monotonic()
    container.kill(signal="SIGTERM")
    took = _exited_after(container, signalled, 30)
    assert took < 20, f"the app took {took:.1f}s to exit with DRAIN_TIMEOUT=2 and a request of 120 s"
    assert "drain_timeout 2.0s reached with 1 in flight" in container.logs().decode()
    request.join(timeout=5)


def test_idle_app_exits_at_once(app_replica):
    container, _ = app_replica(drain_timeout=60)
    signalled = time.monotonic()
    container.kill(signal="SIGTERM")
    took = _exited_after(container, signalled, 30)
    assert took < 10, f"an idle app took {took:.1f}s to exit"
    assert "idle, exiting" in container.logs().decode()
