{#- A rolling release across every minion that runs the pool, one host after another;
    a host whose release fails stops the orchestration (its own pool is reverted):
      salt-run state.orchestrate orch.rolling pillar='{"cabify": {"version": "2"} }'
    The reactor runs it for `cabify/release/request` events and for changes of the
    Consul KV key cabify/desired/version (cabify_desired beacon). -#}
{%- set cabify = salt["pillar.get"]("cabify", {}) %}
{%- set target = salt["pillar.get"]("release:target", "*") %}
{%- set release = salt["slsutil.merge"](cabify, { "release": { "strategy": "rolling" } }) %}

cabify-orch-rolling-hosts:
  salt.state:
    - tgt: {{ target | json }}
    - sls: cabify
    - batch: 1
    - failhard: true
    - pillar:
        cabify: {{ release | json }}
