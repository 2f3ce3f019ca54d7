{#- Heal a host's pool: replace dead or critical replicas like for like and make Consul
    match Docker. Run by the reactor, or by hand:
      salt-run state.orchestrate orch.heal pillar='{"heal": {"minion": "web1"} }' -#}
{%- set heal = salt["pillar.get"]("heal", {}) %}

cabify-orch-heal-pool:
  salt.function:
    - name: cabify.heal
    - tgt: {{ heal.minion | json }}
    - kwarg:
        pool: {{ heal.get("pool", "cabify") | json }}
        replace_critical: {{ heal.get("replace_critical", False) | json }}
