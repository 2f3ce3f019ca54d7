{#- A rolling release of one pool across the fleet, decided by the release controller
    on the master (_runners/cabify_controller.py): batches of max_parallel replicas
    counted fleet-wide, each new one UP on every LB before an old one is drained on
    every LB; any failure reverts every host.
      salt-run state.orchestrate orch.rolling pillar='{"release": {"pool": "cabify", "version": "2"} }'
    release:settings overrides the pool's release settings (max_parallel, host_by_host,
    min_healthy_time, ...), release:env the replicas' environment. The reactor runs it
    for `cabify/release/request` events and for changes of the Consul KV keys
    cabify/desired/<pool>. -#}
{%- from "orch/release.jinja" import release_state with context %}
{{ release_state("rolling") }}
