"""
This host's replicas and images, through dockerd (the docker SDK).

Docker is the truth for what runs: every replica is a container labelled with its
pool, version, role and spec hash. Nothing here knows about Consul or HAProxy.

.. code-block:: bash

    salt-call cabify_docker.replicas cabify
    salt-call cabify_docker.start_replica cabify 2
    salt-call cabify_docker.stop_replica cabify-2-a1b2c3 timeout=10

Images are ``<repository>:<version>`` (``cabify:image:repository``, default
``cabify-app``), built here on a base image that is built with debootstrap where no
registry is reachable, or pulled by digest from the fleet's registry
(``cabify:image:registry``) and tagged so.

A replica is reached on its pool's bridge at its container address, unless the host
publishes replicas (``cabify:publish:address``, a fleet host): then Docker gives each a
port of that host address, and the replica is reached (and registered) there, from any
host.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from typing import Any

from salt.exceptions import CommandExecutionError

try:
    import docker
    import docker.errors

    HAS_DOCKER = True
except ImportError:
    HAS_DOCKER = False

log = logging.getLogger(__name__)

__virtualname__ = "cabify_docker"

LABEL_POOL = "cabify.pool"
LABEL_VERSION = "cabify.version"
LABEL_ROLE = "cabify.role"
LABEL_SPEC = "cabify.spec-hash"
LABEL_ASKED = "cabify.spec"  # the env and resources asked for, as JSON: what a clone gets
LABEL_SOURCE = "cabify.source-hash"
# Where the base image's root filesystem is made (see build_base_image).
ROOTFS_DIR = "/var/cache/cabify"
APP_PORT = 8080
# What a registry may answer for an image's manifest (Docker's and OCI's).
MANIFEST_TYPES = (
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
)


def __virtual__():
    if not HAS_DOCKER:
        return (False, "cabify_docker: the docker library is not installed in Salt's venv")
    return __virtualname__


def _client():
    """One client per process (making one asks dockerd for its API version)."""
    if "cabify_docker.client" not in __context__:
        try:
            __context__["cabify_docker.client"] = docker.from_env(timeout=120)
        except docker.errors.DockerException as err:
            raise CommandExecutionError(f"cannot reach dockerd: {err}") from err
    return __context__["cabify_docker.client"]


def _plan_utils():
    return __utils__["cabify_plan.spec_hash"], __utils__["cabify_plan.source_hash"]


def _failpoint(name: str) -> None:
    __utils__["cabify_failpoints.hit"](name)


def repository() -> str:
    """
    The image repository of the app (``cabify:image:repository``).

    CLI Example:

    .. code-block:: bash

        salt-call cabify_docker.repository
    """
    return __salt__["config.get"]("cabify:image:repository", "cabify-app")


def publish_address() -> str:
    """
    The host address replicas are published on (``cabify:publish:address``), or "" when
    they are reached at their container address (the one-host stack).

    CLI Example:

    .. code-block:: bash

        salt-call cabify_docker.publish_address
    """
    return str(__salt__["config.get"]("cabify:publish:address", "") or "")


def _address(attrs: dict) -> tuple[str, int]:
    """Where a replica is reached: the host address and port Docker published its port
    on, else its address on its bridge network and the app's port."""
    settings = attrs.get("NetworkSettings") or {}
    for binding in (settings.get("Ports") or {}).get(f"{APP_PORT}/tcp") or []:
        if binding.get("HostIp") not in (None, "", "0.0.0.0", "::") and binding.get("HostPort"):  # noqa: S104
            return binding["HostIp"], int(binding["HostPort"])
    networks = settings.get("Networks") or {}
    return next((n.get("IPAddress") for n in networks.values() if n.get("IPAddress")), ""), APP_PORT


def _info(container) -> dict:
    labels = container.labels
    attrs = container.attrs
    address, port = _address(attrs)
    state = attrs.get("State") or {}
    return {
        "name": container.name,
        "id": container.short_id,
        "pool": labels.get(LABEL_POOL),
        "version": labels.get(LABEL_VERSION),
        "role": labels.get(LABEL_ROLE, "stable"),
        "spec": labels.get(LABEL_SPEC),
        "status": container.status,
        "exit_code": state.get("ExitCode", 0),
        "restarts": attrs.get("RestartCount", 0),
        "address": address,
        "port": port,
    }


def replicas(pool: str | None = None, all: bool = True) -> list[dict]:
    """
    The replicas of POOL (of every pool when None), running or not unless
    ``all=False``: ``{name, id, pool, version, role, spec, status, exit_code,
    restarts, address, port}``, sorted by name.

    CLI Example:

    .. code-block:: bash

        salt-call cabify_docker.replicas cabify
        salt-call cabify_docker.replicas all=False --out=json
    """
    label = f"{LABEL_POOL}={pool}" if pool else LABEL_POOL
    try:
        # A container removed between the listing and its inspection is not a replica.
        found = _client().containers.list(all=all, filters={"label": label}, ignore_removed=True)
    except docker.errors.APIError as err:
        raise CommandExecutionError(f"docker: listing replicas: {err}") from err
    return sorted((_info(c) for c in found), key=lambda r: r["name"])


def replica(name: str) -> dict | None:
    """
    One replica by container NAME, or None when there is no such container.

    CLI Example:

    .. code-block:: bash

        salt-call cabify_docker.replica cabify-2-a1b2c3
    """
    try:
        return _info(_client().containers.get(name))
    except docker.errors.NotFound:
        return None
    except docker.errors.APIError as err:
        raise CommandExecutionError(f"docker: reading {name}: {err}") from err


def _networks(name: str) -> list:
    """The networks named exactly NAME (Docker's name filter also matches parts)."""
    return [n for n in _client().networks.list(names=[name]) if n.name == name]


def network_present(name: str, pool: str | None = None) -> bool:
    """
    Create the bridge network NAME if absent; True if it was created. Its containers
    cannot reach each other (``enable_icc`` false): a replica talks only to whoever
    calls it through the host (HAProxy, the Consul agent's checks). A network made
    before that setting keeps its own until ``cabify_docker.network_absent`` removes it
    (``state.apply cabify.clean`` does).

    CLI Example:

    .. code-block:: bash

        salt-call cabify_docker.network_present cabify
    """
    client = _client()
    try:
        if _networks(name):
            return False
        client.networks.create(
            name,
            driver="bridge",
            labels={LABEL_POOL: pool or name},
            options={"com.docker.network.bridge.enable_icc": "false"},
        )
    except docker.errors.APIError as err:
        raise CommandExecutionError(f"docker: creating network {name}: {err}") from err
    return True


def network_absent(name: str) -> bool:
    """
    Remove the bridge network NAME, which no container may use any more; True if it
    was removed.

    CLI Example:

    .. code-block:: bash

        salt-call cabify_docker.network_absent cabify
    """
    try:
        found = _networks(name)
        for network in found:
            network.remove()
    except docker.errors.APIError as err:
        raise CommandExecutionError(f"docker: removing network {name}: {err}") from err
    return bool(found)


def start_replica(
    pool: str,
    version: str,
    role: str = "stable",
    env: dict | None = None,
    resources: dict | None = None,
    network: str | None = None,
) -> dict:
    """
    Start one replica of VERSION for POOL on NETWORK (default: the pool's name) and
    return it. ENV is the replica's environment (the pool adds ``DRAIN_TIMEOUT``);
    RESOURCES may hold ``memory``, ``cpus`` and ``pids``. Every replica runs hardened:
    no Linux capability, no-new-privileges, a read-only root filesystem with a tmpfs
    ``/tmp`` (the image's user, nobody, writes nowhere else).

    CLI Example:

    .. code-block:: bash

        salt-call cabify_docker.start_replica cabify 2 role=canary
    """
    spec_hash, _ = _plan_utils()
    version = str(version)
    name = f"{pool}-{version}-{secrets.token_hex(3)}"
    resources = resources or {}
    environment = {**(env or {}), "APP_VERSION": version, "INSTANCE": name, "PORT": str(APP_PORT)}
    labels = {
        LABEL_POOL: pool,
        LABEL_VERSION: version,
        LABEL_ROLE: role,
        LABEL_SPEC: spec_hash(version, env, resources),
        LABEL_ASKED: json.dumps({"env": env or {}, "resources": resources}, sort_keys=True),
    }
    kwargs: dict[str, Any] = {}
    if resources.get("memory"):
        kwargs["mem_limit"] = resources["memory"]
    if resources.get("cpus"):
        kwargs["nano_cpus"] = int(float(resources["cpus"]) * 1e9)
    if resources.get("pids"):
        kwargs["pids_limit"] = int(resources["pids"])
    if publish_address():
        # A port of the host's address, chosen by Docker: any host can reach it there.
        kwargs["ports"] = {f"{APP_PORT}/tcp": (publish_address(), None)}
    image = f"{repository()}:{version}"
    _failpoint("docker.start")
    try:
        container = _client().containers.run(
            image,
            name=name,
            detach=True,
            environment=environment,
            labels=labels,
            network=network or pool,
            restart_policy={"Name": "unless-stopped"},
            hostname=name,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            read_only=True,
            tmpfs={"/tmp": "rw,noexec,nosuid,size=16m"},  # noqa: S108 (the container's own /tmp)
            **kwargs,
        )
        container.reload()
    except docker.errors.APIError as err:
        raise CommandExecutionError(f"docker: starting a replica of {image} for pool {pool}: {err}") from err
    log.info("cabify: pool %s: started replica %s (%s, %s)", pool, name, version, role)
    return _info(container)


def stop_replica(name: str, timeout: float = 10) -> bool:
    """
    Stop replica NAME with SIGTERM (the app finishes its requests and exits as soon as
    it is idle), SIGKILL after TIMEOUT seconds, and remove it. False when there was no
    such container.

    CLI Example:

    .. code-block:: bash

        salt-call cabify_docker.stop_replica cabify-1-a1b2c3 timeout=10
    """
    _failpoint("docker.stop")
    try:
        container = _client().containers.get(name)
        container.stop(timeout=max(1, int(timeout + 0.999)))
        _remove(container)
    except docker.errors.NotFound:
        return False
    except docker.errors.APIError as err:
        raise CommandExecutionError(f"docker: stopping replica {name}: {err}") from err
    log.info("cabify: stopped and removed replica %s", name)
    return True


def remove_replica(name: str) -> bool:
    """
    Remove replica NAME at once (SIGKILL if it runs); False when there was none.

    CLI Example:

    .. code-block:: bash

        salt-call cabify_docker.remove_replica cabify-1-a1b2c3
    """
    try:
        _remove(_client().containers.get(name))
    except docker.errors.NotFound:
        return False
    except docker.errors.APIError as err:
        raise CommandExecutionError(f"docker: removing replica {name}: {err}") from err
    return True


def _remove(container) -> None:
    """A container that is gone or being removed already is as good as removed."""
    try:
        container.remove(force=True)
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as err:
        if err.status_code != 409 or "in progress" not in str(err):
            raise


def clone_spec(name: str) -> dict | None:
    """
    What replica NAME is made of (version, role, env, resources, network), to start
    its like; None when it is gone.

    CLI Example:

    .. code-block:: bash

        salt-call cabify_docker.clone_spec cabify-1-a1b2c3
    """
    try:
        container = _client().containers.get(name)
    except docker.errors.NotFound:
        return None
    except docker.errors.APIError as err:
        raise CommandExecutionError(f"docker: reading {name}: {err}") from err
    return __utils__["cabify_plan.clone_spec"](container.attrs, container.labels)


def wait_gone(name: str, timeout: float = 10) -> bool:
    """
    Wait until container NAME no longer runs; True if it stopped within TIMEOUT.

    CLI Example:

    .. code-block:: bash

        salt-call cabify_docker.wait_gone cabify-1-a1b2c3
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = replica(name)
        if current is None or current["status"] != "running":
            return True
        time.sleep(0.2)
    return False


# --- images ------------------------------------------------------------------------------


def image_exists(image: str) -> bool:
    """
    True if IMAGE (name:tag) is in the local image store.

    CLI Example:

    .. code-block:: bash

        salt-call cabify_docker.image_exists cabify-base:bookworm
    """
    try:
        _client().images.get(image)
    except docker.errors.ImageNotFound:
        return False
    except docker.errors.APIError as err:
        raise CommandExecutionError(f"docker: {err}") from err
    return True


def build_base_image(image: str, mirror: str, suite: str = "bookworm") -> str:
    """
    Build IMAGE from nothing with debootstrap (minbase + python3) and ``docker import``:
    the base image of hosts that reach no registry. Takes about half a minute.

    CLI Example:

    .. code-block:: bash

        salt-call cabify_docker.build_base_image cabify-base:bookworm http://deb.debian.org/debian
    """
    # Not in /tmp: debootstrap makes device nodes, and a /tmp mounted nodev (a hardened
    # host, a container host's tmpfs) refuses them.
    os.makedirs(ROOTFS_DIR, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cabify-rootfs-", dir=ROOTFS_DIR) as rootfs:
        steps = [
            ["debootstrap", "--variant=minbase", "--include=python3", suite, rootfs, mirror],
            ["sh", "-c", f"tar -C {rootfs} -c . | docker import - {image}"],
        ]
        for step in steps:
            proc = subprocess.run(step, capture_output=True, text=True, check=False)
            if proc.returncode:
                raise CommandExecutionError(f"building {image}: {step[0]} failed: {proc.stderr[-2000:]}")
    return image


def image_current(version: str, source_dir: str, base_image: str) -> bool:
    """
    True if the app image of VERSION exists and was built from these sources and base.

    CLI Example:

    .. code-block:: bash

        salt-call cabify_docker.image_current 2 /var/cache/cabify/app cabify-base:bookworm
    """
    _, source_hash = _plan_utils()
    try:
        image = _client().images.get(f"{repository()}:{version}")
    except docker.errors.ImageNotFound:
        return False
    return image.labels.get(LABEL_SOURCE) == source_hash(source_dir, str(version), base_image)


def app_images() -> list[dict]:
    """
    The app's images on this host: tag, version, creation time, and whether a
    container (running or not) runs that version (the label of our replicas; a tag
    that only shares its image with a version in use is not in use).

    CLI Example:

    .. code-block:: bash

        salt-call cabify_docker.app_images
    """
    try:
        containers = _client().containers.list(all=True, ignore_removed=True)
        used = {c.labels.get(LABEL_VERSION) for c in containers} - {None}
        found = []
        for image in _client().images.list(name=repository()):
            for tag in image.tags:
                found.append(
                    {
                        "tag": tag,
                        "version": tag.rsplit(":", 1)[-1],
                        "created": image.attrs.get("Created", ""),
                        "used": tag.rsplit(":", 1)[-1] in used,
                    }
                )
    except docker.errors.APIError as err:
        raise CommandExecutionError(f"docker: {err}") from err
    return found


def remove_image(tag: str) -> str:
    """
    Remove the app image TAG (its layers stay while another image shares them).

    CLI Example:

    .. code-block:: bash

        salt-call cabify_docker.remove_image cabify-app:2
    """
    client = _client()
    name, _, version = tag.rpartition(":")
    try:
        image = client.images.get(tag)
        # Its registry names (`<registry>/<repository>:<version>`, pushed from here) go
        # with it.
        for other in [t for t in image.tags if t != tag and t.endswith(f"/{name}:{version}")] + [tag]:
            client.images.remove(other)
        # An image pulled by digest keeps that reference once its tag is gone: with no
        # tag left, it goes too (unless a container uses it).
        if not client.images.get(image.id).tags:
            client.images.remove(image.id)
    except docker.errors.ImageNotFound:
        pass
    except docker.errors.APIError as err:
        raise CommandExecutionError(f"removing {tag}: {err}") from err
    return tag


def _registry_get(registry: str, path: str, accept: str | None = None, method: str = "GET") -> dict:
    request = urllib.request.Request(f"http://{registry}/v2/{repository()}/{path}", method=method)
    if accept:
        request.add_header("Accept", accept)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310 - the fleet's own registry
            body = answer.read()
            return {"headers": answer.headers, "json": json.loads(body) if body.strip() else None}
    except ValueError as err:
        raise CommandExecutionError(f"registry {registry}: {method} {path}: not JSON: {err}") from err
    except urllib.error.HTTPError as err:
        if err.code == 404:
            return {"headers": err.headers, "json": None, "missing": True}
        raise CommandExecutionError(f"registry {registry}: {method} {path}: {err}") from err
    except OSError as err:
        raise CommandExecutionError(f"registry {registry} does not answer: {err}") from err


def registry_digest(version: str, registry: str) -> str | None:
    """
    The digest REGISTRY (``host:port``) holds for the app image of VERSION, or None
    when it has no such tag.

    CLI Example:

    .. code-block:: bash

        salt-call cabify_docker.registry_digest 2 10.213.0.1:5000
    """
    found = _registry_get(registry, f"manifests/{version}", ", ".join(MANIFEST_TYPES), method="HEAD")
    return None if found.get("missing") else found["headers"].get("Docker-Content-Digest")


def registry_images(registry: str) -> list[dict]:
    """
    The app images REGISTRY holds: tag (the version), version, digest and when each was
    built (from its image config), in the shape the pruning takes.

    CLI Example:

    .. code-block:: bash

        salt-call cabify_docker.registry_images 127.0.0.1:5000
    """
    listed = _registry_get(registry, "tags/list")
    found = []
    for tag in sorted((listed["json"] or {}).get("tags") or []):
        manifest = _registry_get(registry, f"manifests/{tag}", MANIFEST_TYPES[0])
        if manifest.get("missing") or not manifest["json"]:
            continue
        config_digest = (manifest["json"].get("config") or {}).get("digest")
        if not config_digest:  # not an image manifest (an index): not one of ours
            continue
        config = _registry_get(registry, f"blobs/{config_digest}")["json"] or {}
        found.append(
            {
                "tag": tag,
                "version": tag,
                "digest": manifest["headers"].get("Docker-Content-Digest"),
                "created": config.get("created", ""),
                "used": False,
            }
        )
    return found


def registry_remove(registry: str, version: str) -> str | None:
    """
    Delete the app image of VERSION from REGISTRY (its manifest: the tag is gone, its
    layers are freed by the registry's garbage collection). Returns its digest, or None
    when the registry had no such tag.

    CLI Example:

    .. code-block:: bash

        salt-call cabify_docker.registry_remove 127.0.0.1:5000 2
    """
    digest = registry_digest(version, registry)
    if digest:
        _registry_get(registry, f"manifests/{digest}", method="DELETE")
        log.info("cabify: removed %s:%s (%s) from registry %s", repository(), version, digest, registry)
    return digest


def local_digests(version: str, registry: str) -> list[str]:
    """
    The digests that the local app image of VERSION has in REGISTRY (it was pushed
    there or pulled from there), or [] when there is no such image.

    CLI Example:

    .. code-block:: bash

        salt-call cabify_docker.local_digests 2 10.213.0.1:5000
    """
    try:
        image = _client().images.get(f"{repository()}:{version}")
    except docker.errors.ImageNotFound:
        return []
    except docker.errors.APIError as err:
        raise CommandExecutionError(f"docker: {err}") from err
    prefix = f"{registry}/{repository()}@"
    return [d.split("@", 1)[1] for d in image.attrs.get("RepoDigests") or [] if d.startswith(prefix)]


def push_image(version: str, registry: str) -> str:
    """
    Push the local app image of VERSION to REGISTRY and return its digest there.

    CLI Example:

    .. code-block:: bash

        salt-call cabify_docker.push_image 2 127.0.0.1:5000
    """
    client = _client()
    remote = f"{registry}/{repository()}"
    digest = None
    try:
        client.images.get(f"{repository()}:{version}").tag(remote, tag=str(version))
        for line in client.images.push(remote, tag=str(version), stream=True, decode=True):
            if line.get("error"):
                raise CommandExecutionError(f"pushing {remote}:{version}: {line['error']}")
            digest = (line.get("aux") or {}).get("Digest") or digest
    except docker.errors.APIError as err:
        raise CommandExecutionError(f"pushing {remote}:{version}: {err}") from err
    # The tag `<registry>/<repository>:<version>` stays: it holds the digest the
    # registry gave (local_digests), and goes with `<repository>:<version>` (remove_image).
    if not digest:
        raise CommandExecutionError(f"pushing {remote}:{version}: the registry gave no digest")
    log.info("cabify: pushed %s:%s as %s", remote, version, digest)
    return digest


def pull_image(version: str, registry: str, digest: str) -> str:
    """
    Pull the app image of VERSION from REGISTRY by DIGEST (the bytes that were pushed,
    whatever the tag says by then) and tag it ``<repository>:<version>``. Returns the
    image's ID.

    CLI Example:

    .. code-block:: bash

        salt-call cabify_docker.pull_image 2 10.213.0.1:5000 sha256:0a1b...
    """
    reference = f"{registry}/{repository()}@{digest}"
    try:
        image = _client().images.pull(reference)
        image.tag(repository(), tag=str(version))
    except docker.errors.APIError as err:
        raise CommandExecutionError(f"pulling {reference}: {err}") from err
    log.info("cabify: pulled %s as %s:%s", reference, repository(), version)
    return image.id


def build_image(version: str, source_dir: str, base_image: str) -> str:
    """
    Build the app image of VERSION from SOURCE_DIR's Dockerfile on BASE_IMAGE, labelled
    with the content hash of its sources.

    CLI Example:

    .. code-block:: bash

        salt-call cabify_docker.build_image 2 /var/cache/cabify/app cabify-base:bookworm
    """
    _, source_hash = _plan_utils()
    tag = f"{repository()}:{version}"
    try:
        _client().images.build(
            path=source_dir,
            tag=tag,
            buildargs={"BASE_IMAGE": base_image},
            labels={
                LABEL_SOURCE: source_hash(source_dir, str(version), base_image),
                LABEL_VERSION: str(version),
            },
            rm=True,
            pull=False,
        )
    except (docker.errors.BuildError, docker.errors.APIError) as err:
        raise CommandExecutionError(f"building {tag} on {base_image}: {err}") from err
    return tag
