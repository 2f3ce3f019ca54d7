{#- A release was asked for: by an event `cabify/release/request` with data
    {"version": "2"}, or by the cabify_desired beacon when the Consul KV key
    cabify/desired/version changed. Hand off to the rolling orchestration. -#}
{%- set asked = data.get("data", data) %}
{%- set target = data["id"] if tag.startswith("salt/beacon/") else "*" %}

cabify-reactor-release-orchestrated:
  runner.state.orchestrate:
    - args:
      - mods: orch.rolling
      - pillar:
          cabify:
            version: {{ asked["version"] | string | json }}
          release:
            target: {{ target | json }}
