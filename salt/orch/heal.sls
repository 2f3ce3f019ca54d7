{#- Heal a host's pool: finish what a release that died left behind, replace dead or
    critical replicas like for like, make Consul match Docker. Run by the reactor, or
    by hand:
      salt-run state.orchestrate orch.heal pillar='{"heal": {"minion": "web1", "pool": "cabify"}}' -#}
{%- set heal = salt["pillar.get"]("heal", {}) %}

cabify-orch-heal-recovered:
  salt.function:
    - name: cabify_release.recover
    - tgt: {{ heal.minion | json }}
    - arg:
      - {{ heal.pool | json }}

cabify-orch-heal-pool:
  salt.function:
    - name: cabify_pool.heal
    - tgt: {{ heal.minion | json }}
    - kwarg:
        pool: {{ heal.pool | json }}
        replace_critical: {{ heal.get("replace_critical", False) | json }}
    - require:
      - salt: cabify-orch-heal-recovered
