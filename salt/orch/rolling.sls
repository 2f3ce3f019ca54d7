{#- A rolling release of one pool across the fleet, decided by the release controller
    on the master (_runners/cabify_controller.py): batches of max_parallel replicas
    counted fleet-wide, each new one UP on every LB before an old one is drained on
    every LB; any failure reverts every host.
      salt-run state.orchestrate orch.rolling pillar='{"release": {"pool": "cabify", "version": "2"} }'
    release:settings overrides the pool's release settings (max_parallel, host_by_host,
    min_healthy_time, ...), release:env the replicas' environment. The reactor runs it
    for `cabify/release/request` events and for changes of the Consul KV keys
    cabify/desired/<pool>. -#}
{%- set release = salt["pillar.get"]("release", {}) %}
{%- if not release.get("pool") or release.get("version") is none %}

cabify-orch-rolling-pillar-missing:
  test.fail_without_changes:
    - comment: "pillar release:pool and release:version are required, e.g. pillar='{\"release\": {\"pool\": \"cabify\", \"version\": \"2\"} }'"
{%- else %}

cabify-orch-rolling-{{ release.pool }}-released:
  salt.runner:
    - name: cabify.release
    - pool: {{ release.pool | json }}
    - version: {{ release.version | string | json }}
    - strategy: rolling
    - settings: {{ release.get("settings", {}) | json }}
    - env: {{ release.get("env") | json }}
    - trigger: {{ release.get("trigger") | json }}
{%- endif %}
