{#- A canary release of one pool across every minion that runs it, one host after
    another; an aborted canary fails its host and stops the orchestration:
      salt-run state.orchestrate orch.canary pillar='{"release": {"pool": "cabify", "version": "2"} }'
    release:canary overrides the pool's canary settings (replicas, steps, analysis,
    auto_promote), release:settings the release settings, release:env the replicas'
    environment, release:target the minions (a compound target, default G@roles:app),
    release:timeout how long one host's canary may take (default 7200 s). (Not yet the
    release controller's: see orch.rolling.) -#}
{%- from "orch/release.jinja" import release_state with context %}
{{ release_state("canary") }}
