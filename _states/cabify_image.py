"""
The Cabify App image: built on this host (and its base image when no registry is
reachable), pushed from the build host to the fleet's registry, pulled by digest on an
app host.

.. code-block:: yaml

    cabify-image-built:
      cabify_image.built:
        - version: "2"
        - source_dir: /var/cache/cabify/app
        - base_image: cabify-base:bookworm
        - base_mirror: http://deb.debian.org/debian   # build the base if absent

    cabify-image-pushed:
      cabify_image.pushed:
        - version: "2"
        - registry: 127.0.0.1:5000
        - require:
          - cabify_image: cabify-image-built

    cabify-image-pulled:
      cabify_image.pulled:
        - version: "2"
        - registry: 10.213.0.1:5000
"""

from __future__ import annotations

from salt.exceptions import CommandExecutionError

__virtualname__ = "cabify_image"


def __virtual__():
    if "cabify_docker.build_image" not in __salt__:
        return (False, "cabify_image: the cabify_docker module is not loaded (docker library?)")
    return __virtualname__


def built(
    name: str,
    version: str,
    source_dir: str,
    base_image: str,
    base_mirror: str | None = None,
    base_suite: str = "bookworm",
) -> dict:
    """
    The app image of VERSION (``<cabify:image:repository>:VERSION``) exists and was
    built from SOURCE_DIR on BASE_IMAGE. With
    BASE_MIRROR, a missing BASE_IMAGE is built with debootstrap; without it, a missing
    base image is an error.
    """
    ret = {"name": name, "changes": {}, "result": True, "comment": ""}
    tag = f"{__salt__['cabify_docker.repository']()}:{version}"
    try:
        need_base = not __salt__["cabify_docker.image_exists"](base_image)
        if need_base and not base_mirror:
            raise CommandExecutionError(
                f"base image {base_image!r} is not on this host and no registry is used "
                "(pillar cabify:image:base: name a local image, or leave it to the built one)"
            )
        need_app = need_base or not __salt__["cabify_docker.image_current"](version, source_dir, base_image)
        if not need_app:
            ret["comment"] = f"{tag} is up to date"
            return ret
        changes = {"built": tag, **({"base": base_image} if need_base else {})}
        if __opts__["test"]:
            ret.update(result=None, changes=changes, comment=f"Would build {tag}")
            return ret
        if need_base:
            __salt__["cabify_docker.build_base_image"](base_image, base_mirror, base_suite)
        __salt__["cabify_docker.build_image"](version, source_dir, base_image)
    except CommandExecutionError as err:
        ret.update(result=False, comment=str(err))
        return ret
    ret.update(changes=changes, comment=f"Built {tag}")
    return ret


def _prune(name: str, where: str, list_images, remove, keep: int, protect: list[str] | None) -> dict:
    """Remove the images of LIST_IMAGES() that images_to_prune names, with REMOVE(tag);
    WHERE says where, in the comments."""
    ret = {"name": name, "changes": {}, "result": True, "comment": ""}
    try:
        images = list_images()
        prune = __utils__["cabify_plan.images_to_prune"](images, int(keep), {str(v) for v in protect or []})
        if not prune:
            ret["comment"] = f"{where}: {len(images)} app image(s), none to prune (keep {keep})"
            return ret
        if __opts__["test"]:
            comment = f"{where}: would remove {len(prune)} old image(s)"
            ret.update(result=None, changes={"removed": prune}, comment=comment)
            return ret
        removed = []
        try:
            for tag in prune:
                remove(tag)
                removed.append(tag)
        finally:
            ret["changes"] = {"removed": removed} if removed else {}
    except CommandExecutionError as err:
        ret.update(result=False, comment=str(err))
        return ret
    ret["comment"] = f"{where}: removed {len(removed)} old image(s), kept the newest {keep}"
    return ret


def pruned(name: str, keep: int, protect: list[str] | None = None) -> dict:
    """
    Old app images are removed: only the KEEP newest stay, beside every image a
    container uses and the versions in PROTECT (what the pools are asked to run).
    """
    return _prune(
        name,
        "this host",
        __salt__["cabify_docker.app_images"],
        __salt__["cabify_docker.remove_image"],
        keep,
        protect,
    )


def _remote_digest(version: str, registry: str) -> tuple[str | None, bool]:
    """The registry's digest of VERSION, and whether the registry answered: under
    test=True one that does not answer yet (a dry run before the registry's own states
    ran) holds nothing; for real it is an error."""
    try:
        return __salt__["cabify_docker.registry_digest"](version, registry), True
    except CommandExecutionError:
        if not __opts__["test"]:
            raise
        return None, False


def pushed(name: str, version: str, registry: str) -> dict:
    """
    REGISTRY (``host:port``) holds this host's app image of VERSION under its tag: it is
    pushed unless the registry's digest for the tag is the one this image was pushed as.
    """
    ret = {"name": name, "changes": {}, "result": True, "comment": ""}
    reference = f"{registry}/{__salt__['cabify_docker.repository']()}:{version}"
    try:
        remote, _ = _remote_digest(version, registry)
        if remote and remote in __salt__["cabify_docker.local_digests"](version, registry):
            ret["comment"] = f"{reference} is this host's image ({remote})"
            return ret
        if __opts__["test"]:
            changes = {"pushed": reference, "was": remote}
            ret.update(result=None, changes=changes, comment=f"Would push {reference}")
            return ret
        digest = __salt__["cabify_docker.push_image"](version, registry)
    except CommandExecutionError as err:
        ret.update(result=False, comment=str(err))
        return ret
    ret.update(changes={"pushed": reference, "digest": digest, "was": remote}, comment=f"Pushed {reference}")
    return ret


def pulled(name: str, version: str, registry: str) -> dict:
    """
    The app image of VERSION is the one REGISTRY (``host:port``) holds under that tag,
    pulled by its digest, so that every host runs the same bytes. A version the registry
    lacks is an error that says how to push it.
    """
    ret = {"name": name, "changes": {}, "result": True, "comment": ""}
    repository = __salt__["cabify_docker.repository"]()
    tag = f"{repository}:{version}"
    try:
        digest, answered = _remote_digest(version, registry)
        if not answered:
            ret.update(result=None, comment=f"Would pull {tag} from {registry} (it does not answer yet)")
            return ret
        if digest is None:
            raise CommandExecutionError(
                f"registry {registry} has no {tag}: build and push it first "
                f'(salt-run state.orchestrate orch.build pillar=\'{{"build": {{"version": "{version}"}} }}\')'
            )
        if digest in __salt__["cabify_docker.local_digests"](version, registry):
            ret["comment"] = f"{tag} is {registry}'s {digest}"
            return ret
        changes = {"pulled": f"{registry}/{repository}@{digest}", "tag": tag}
        if __opts__["test"]:
            ret.update(result=None, changes=changes, comment=f"Would pull {tag} from {registry}")
            return ret
        __salt__["cabify_docker.pull_image"](version, registry, digest)
    except CommandExecutionError as err:
        ret.update(result=False, comment=str(err))
        return ret
    ret.update(changes=changes, comment=f"Pulled {tag} from {registry} ({digest})")
    return ret


def registry_pruned(name: str, registry: str, keep: int, protect: list[str] | None = None) -> dict:
    """
    Old app images leave REGISTRY (``host:port``, the build host's own): only the KEEP
    newest stay, beside the versions in PROTECT (what the pools run). The layers they
    leave are freed by the registry's garbage collection (salt/cabify/build.sls runs it).
    """
    return _prune(
        name,
        f"registry {registry}",
        lambda: __salt__["cabify_docker.registry_images"](registry),
        lambda version: __salt__["cabify_docker.registry_remove"](registry, version),
        keep,
        protect,
    )
