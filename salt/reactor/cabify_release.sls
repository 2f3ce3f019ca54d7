{#- A release was asked for: by an event `cabify/release/request` with data
    {"version": "2"} (optionally "strategy": "canary" and "canary": {settings}), or by
    the cabify_desired beacon when the Consul KV key cabify/desired/version changed.
    Hand off to the orchestration of that strategy (orch.rolling by default). -#}
{%- set asked = data.get("data", data) %}
{%- set target = data["id"] if tag.startswith("salt/beacon/") else "*" %}
{%- set strategy = "canary" if asked.get("strategy") == "canary" else "rolling" %}
{%- set cabify = {"version": asked["version"] | string} %}
{%- do cabify.update({"canary": asked["canary"]}) if asked.get("canary") is mapping %}

cabify-reactor-release-orchestrated:
  runner.state.orchestrate:
    - args:
      - mods: orch.{{ strategy }}
      - pillar:
          cabify: {{ cabify | json }}
          release:
            target: {{ target | json }}
