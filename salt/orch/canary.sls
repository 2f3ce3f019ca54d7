{#- A canary release of one pool across every minion that runs it, one host after
    another; an aborted canary fails its host and stops the orchestration:
      salt-run state.orchestrate orch.canary pillar='{"release": {"pool": "cabify", "version": "2"} }'
    release:canary overrides the pool's canary settings (replicas, steps, analysis,
    auto_promote); the rest as in orch.rolling. -#}
{%- from "orch/release.jinja" import release_state with context %}
{{ release_state("canary") }}
