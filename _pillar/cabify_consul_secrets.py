"""
Each minion's own Consul secrets, as pillar, made on the master: nothing here is in
a pillar file, and no minion gets another's.

- ``consul:api:token``: its host token (the policies of its roles, ``_utils/cabify_acl.py``);
- ``consul:config:acl:tokens:agent``: its agent's own token (writes its node only);
- ``consul:gossip:key``: the gossip encryption key (of the generation in use: see
  ``orch.consul_gossip_key``);
- ``consul:tls``: its agent's TLS certificate and key for RPC, and the CA's
  certificate, from a CA Salt made on the master (``_utils/cabify_tls.py``).

Tokens and the gossip key are derived from the master's secrets file
(``cabify_acl:secrets``, made on first use); the management token is never given.
The TLS material is kept in ``cabify_acl:tls_dir`` (default
``/etc/cabify/consul-tls``, 0700). The runner ``cabify_acl.ensure`` puts the tokens
in Consul.

.. code-block:: yaml

    # master configuration
    pillar_dirs:
      - /srv/cabify/_pillar
    ext_pillar:
      - cabify_consul_secrets: {}
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

__virtualname__ = "cabify_consul_secrets"

TLS_DIR = "/etc/cabify/consul-tls"


def __virtual__():
    return __virtualname__


def ext_pillar(minion_id: str, pillar: dict, **_: Any) -> dict:
    """MINION_ID's tokens, gossip key and TLS material (see the module's doc)."""
    acl = __utils__
    secrets = acl["cabify_acl.load"](acl["cabify_acl.secrets_path"](__opts__))
    consul = (pillar or {}).get("consul") or {}
    config = consul.get("config") or {}
    roles = acl["cabify_acl.roles"](minion_id, pillar, __opts__)
    found: dict[str, Any] = {
        "api": {"token": acl["cabify_acl.token_ids"](secrets, f"host:{minion_id}")["SecretID"]},
        "config": {
            "acl": {
                "tokens": {"agent": acl["cabify_acl.token_ids"](secrets, f"agent:{minion_id}")["SecretID"]}
            },
        },
        "gossip": {"key": acl["cabify_acl.gossip_key"](secrets)},
    }
    tls_dir = (__opts__.get("cabify_acl") or {}).get("tls_dir") or TLS_DIR
    try:
        found["tls"] = acl["cabify_tls.agent_cert"](
            tls_dir,
            minion_id,
            config.get("datacenter") or "dc1",
            "consul-server" in roles,
            [str(config.get("bind_addr") or "")],
        )
    except (OSError, ValueError) as err:
        log.error("cabify_consul_secrets: %s: no TLS certificate: %s", minion_id, err)
        found["tls_unavailable"] = str(err)
    return {"consul": found}
