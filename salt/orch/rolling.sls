{#- A rolling release of one pool across every minion that runs it, one host after
    another; a host whose release fails stops the orchestration (its own pool is
    reverted):
      salt-run state.orchestrate orch.rolling pillar='{"release": {"pool": "cabify", "version": "2"} }'
    release:settings overrides the pool's release settings (max_parallel, ...),
    release:env the replicas' environment, release:target the minions (a compound
    target, default the app hosts: G@roles:app), release:timeout how long one host's
    release may take (default 7200 s). The reactor runs it for `cabify/release/request`
    events and for changes of the Consul KV keys cabify/desired/<pool>. -#}
{%- from "orch/release.jinja" import release_state with context %}
{{ release_state("rolling") }}
