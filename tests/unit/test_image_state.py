"""The cabify_image.pruned state through Salt's loader (mocked dunders): under
test=True it names the images it would remove and removes none; a Docker error
is `result: False` with what was removed so far as its changes."""

from __future__ import annotations

from unittest.mock import MagicMock

import pytest
from salt.exceptions import CommandExecutionError

from tests.unit.conftest import load, utils

state = load("states", "cabify_image")

IMAGES = [
    {"tag": "cabify-app:1", "version": "1", "created": "2026-11-26T01:00:00Z", "used": True},
    {"tag": "cabify-app:2", "version": "2", "created": "2026-11-26T02:00:00Z", "used": False},
    {"tag": "cabify-app:3", "version": "3", "created": "2026-11-26T03:00:00Z", "used": False},
    {"tag": "cabify-app:4", "version": "4", "created": "2026-11-26T04:00:00Z", "used": False},
]


@pytest.fixture(params=[False, True], ids=["apply", "test=True"])
def test_mode(request):
    return request.param


@pytest.fixture
def salt():
    return {
        "cabify_docker.app_images": MagicMock(return_value=IMAGES),
        "cabify_docker.remove_image": MagicMock(side_effect=lambda tag: tag),
    }


@pytest.fixture
def configure_loader_modules(salt, test_mode):
    return {state: {"__salt__": salt, "__utils__": utils(), "__opts__": {"test": test_mode}}}


def test_pruned_names_the_old_images_and_removes_them_only_for_real(salt, test_mode):
    ret = state.pruned("images", keep=1, protect=["3"])
    assert ret["changes"] == {"removed": ["cabify-app:2"]}
    assert ret["result"] is (None if test_mode else True)
    assert salt["cabify_docker.remove_image"].call_count == (0 if test_mode else 1)


def test_nothing_to_prune_is_no_change(salt, test_mode):
    ret = state.pruned("images", keep=5)
    assert ret["result"] is True and ret["changes"] == {}
    salt["cabify_docker.remove_image"].assert_not_called()


@pytest.mark.parametrize("test_mode", [False])
def test_a_docker_error_reports_what_was_removed_before_it(salt, test_mode):
    salt["cabify_docker.remove_image"].side_effect = ["cabify-app:2", CommandExecutionError("docker: busy")]
    ret = state.pruned("images", keep=1)
    assert ret["result"] is False and "docker: busy" in ret["comment"]
    assert ret["changes"] == {"removed": ["cabify-app:2"]}


@pytest.fixture
def registry(salt):
    """The registry holds version 2 as sha256:new; this host has it as LOCAL."""
    salt.update(
        {
            "cabify_docker.repository": MagicMock(return_value="cabify-app"),
            "cabify_docker.registry_digest": MagicMock(side_effect=lambda v, _: {"2": "sha256:new"}.get(v)),
            "cabify_docker.local_digests": MagicMock(return_value=["sha256:old"]),
            "cabify_docker.push_image": MagicMock(return_value="sha256:pushed"),
            "cabify_docker.pull_image": MagicMock(return_value="sha256:image"),
        }
    )
    return salt


def test_pushed_pushes_an_image_the_registry_does_not_hold_only_for_real(registry, test_mode):
    ret = state.pushed("push", version="2", registry="127.0.0.1:5000")
    assert ret["result"] is (None if test_mode else True)
    assert ret["changes"]["pushed"] == "127.0.0.1:5000/cabify-app:2"
    assert registry["cabify_docker.push_image"].call_count == (0 if test_mode else 1)


def test_pushed_is_no_change_when_the_registry_holds_this_image(registry, test_mode):
    registry["cabify_docker.local_digests"].return_value = ["sha256:other", "sha256:new"]
    ret = state.pushed("push", version="2", registry="127.0.0.1:5000")
    assert ret["result"] is True and ret["changes"] == {}
    registry["cabify_docker.push_image"].assert_not_called()


def test_pulled_pulls_by_the_registry_digest_only_for_real(registry, test_mode):
    ret = state.pulled("pull", version="2", registry="10.213.0.1:5000")
    assert ret["result"] is (None if test_mode else True)
    assert ret["changes"] == {"pulled": "10.213.0.1:5000/cabify-app@sha256:new", "tag": "cabify-app:2"}
    if not test_mode:
        registry["cabify_docker.pull_image"].assert_called_once_with("2", "10.213.0.1:5000", "sha256:new")


def test_pulled_is_no_change_when_this_host_has_that_digest(registry, test_mode):
    registry["cabify_docker.local_digests"].return_value = ["sha256:other", "sha256:new"]
    ret = state.pulled("pull", version="2", registry="10.213.0.1:5000")
    assert ret["result"] is True and ret["changes"] == {}


def test_a_version_the_registry_lacks_says_how_to_push_it(registry, test_mode):
    ret = state.pulled("pull", version="3", registry="10.213.0.1:5000")
    assert ret["result"] is False and ret["changes"] == {}
    assert "registry 10.213.0.1:5000 has no cabify-app:3" in ret["comment"]
    assert "orch.build" in ret["comment"]
    registry["cabify_docker.pull_image"].assert_not_called()


def test_registry_pruned_removes_the_old_versions_from_the_registry_only_for_real(registry, test_mode):
    registry["cabify_docker.registry_images"] = MagicMock(return_value=[{**i, "used": False} for i in IMAGES])
    registry["cabify_docker.registry_remove"] = MagicMock(side_effect=lambda r, v: f"sha256:{v}")
    for image in registry["cabify_docker.registry_images"].return_value:
        image["tag"] = image["version"]
    ret = state.registry_pruned("registry", registry="127.0.0.1:5000", keep=1, protect=["1"])
    assert ret["changes"] == {"removed": ["2", "3"]}
    assert ret["result"] is (None if test_mode else True)
    assert registry["cabify_docker.registry_remove"].call_count == (0 if test_mode else 2)


def test_a_registry_that_does_not_answer_yet_is_a_would_push_under_test_only(registry, test_mode):
    registry["cabify_docker.registry_digest"].side_effect = CommandExecutionError("registry does not answer")
    pushed = state.pushed("push", version="2", registry="127.0.0.1:5000")
    pulled = state.pulled("pull", version="2", registry="10.213.0.1:5000")
    if test_mode:
        assert pushed["result"] is None and pulled["result"] is None, (pushed, pulled)
    else:
        assert pushed["result"] is False and pulled["result"] is False
        assert "does not answer" in pulled["comment"]
