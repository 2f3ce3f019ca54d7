{#- Heal a host's pool: replace dead or critical replicas like for like and make Consul
    match Docker; for what a release that died left behind (action orphan), finish it
    first. Run by the reactor, or by hand:
      salt-run state.orchestrate orch.heal pillar='{"heal": {"minion": "web1", "pool": "cabify", "action": "orphan"} }' -#}
{%- set heal = salt["pillar.get"]("heal", {}) %}
{%- if heal.get("action") == "orphan" %}

cabify-orch-heal-recovered:
  salt.function:
    - name: cabify_release.recover
    - tgt: {{ heal.minion | json }}
    - arg:
      - {{ heal.pool | json }}
    - require_in:
      - salt: cabify-orch-heal-pool
{%- endif %}

cabify-orch-heal-pool:
  salt.function:
    - name: cabify_pool.heal
    - tgt: {{ heal.minion | json }}
    - kwarg:
        pool: {{ heal.pool | json }}
        replace_critical: {{ heal.get("replace_critical", False) | json }}
