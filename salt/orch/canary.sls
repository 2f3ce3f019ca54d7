{#- A canary release across every minion that runs the pool, one host after another:
      salt-run state.orchestrate orch.canary pillar='{"cabify": {"version": "2"} }'
    Each host runs the cabify formula with release:strategy canary; an aborted canary
    fails its host and stops the orchestration. -#}
{%- set cabify = salt["pillar.get"]("cabify", {}) %}
{%- set target = salt["pillar.get"]("release:target", "*") %}
{%- set release = salt["slsutil.merge"](cabify, { "release": { "strategy": "canary" } }) %}

cabify-orch-canary-hosts:
  salt.state:
    - tgt: {{ target | json }}
    - sls: cabify
    - batch: 1
    - failhard: true
    - pillar:
        cabify: {{ release | json }}
