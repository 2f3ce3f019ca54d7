{#- Rotate every Consul token of this project (the controller's, the operators', each
    host's and each agent's), with nothing left on an old one:
      salt-run state.orchestrate orch.consul_tokens
    1. the master makes the next generation's tokens beside the old ones
       (runner cabify_acl.rotate_tokens);
    2. every minion reads its pillar again (its modules use the new host token);
    3. every agent gets its new token, one host at a time (consul sls: a restart);
    4. every app host registers its replicas again with its new token (Consul syncs a
       registration with the token it was made with);
    5. the master deletes the old generation's tokens (runner cabify_acl.prune).
    The hosts are those of pillar fleet:target (a list of minion IDs), or every minion
    of this master. -#}
{%- set target = salt["pillar.get"]("fleet:target", []) | join(",") %}
{%- set tgt = {"tgt": target, "tgt_type": "list"} if target else {"tgt": "*", "tgt_type": "glob"} %}

cabify-orch-tokens-rotated:
  salt.runner:
    - name: cabify_acl.rotate_tokens

cabify-orch-tokens-pillar-refreshed:
  salt.function:
    - name: saltutil.refresh_pillar
    - tgt: {{ tgt.tgt | json }}
    - tgt_type: {{ tgt.tgt_type }}
    - kwarg:
        wait: true
    - require:
      - salt: cabify-orch-tokens-rotated

cabify-orch-tokens-agents-restarted:
  salt.state:
    - tgt: {{ tgt.tgt | json }}
    - tgt_type: {{ tgt.tgt_type }}
    - sls: consul
    - batch: 1
    - require:
      - salt: cabify-orch-tokens-pillar-refreshed

cabify-orch-tokens-registrations-renewed:
  salt.function:
    - name: cabify_pool.reregister
    - tgt: {{ ("L@" ~ target ~ " and G@roles:app" if target else "G@roles:app") | json }}
    - tgt_type: compound
    - require:
      - salt: cabify-orch-tokens-agents-restarted

cabify-orch-tokens-pruned:
  salt.runner:
    - name: cabify_acl.prune
    - require:
      - salt: cabify-orch-tokens-registrations-renewed
