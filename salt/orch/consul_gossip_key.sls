{#- Rotate Consul's gossip encryption key, with no agent restarted:
      salt-run state.orchestrate orch.consul_gossip_key
    1. the master installs the next key on every member, puts it in use and removes
       the old one (runner cabify_acl.rotate_gossip_key: the management token never
       leaves the master);
    2. every host's /etc/consul.d/gossip.json gets the new key (from pillar), for
       when its agent starts without a keyring.
    The hosts are those of pillar fleet:hosts, or this master's own minions
    (fleet:target, a list of minion IDs, overrides). -#}
{%- set target = salt["pillar.get"]("fleet:target", []) | join(",") %}

cabify-orch-gossip-key-rotated:
  salt.runner:
    - name: cabify_acl.rotate_gossip_key

cabify-orch-gossip-key-written:
  salt.state:
{%- if target %}
    - tgt: {{ target | json }}
    - tgt_type: list
{%- else %}
    - tgt: "*"
{%- endif %}
    - sls: consul.config
    - require:
      - salt: cabify-orch-gossip-key-rotated
