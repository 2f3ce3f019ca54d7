{#- A release was asked for: by an event `cabify/release/request` with data
    {"pool": "cabify", "version": "2"} (optionally "strategy": "canary", "canary":
    {canary settings} and "settings": {release settings}), or by the cabify_desired beacon when a Consul KV key
    cabify/desired/<pool> changed. Hand off to the orchestration of that strategy: a rolling
    one is decided by the release controller on the master, for the whole fleet. -#}
{%- set asked = data.get("data", data) %}
{%- set release = {"pool": asked.get("pool"), "version": asked.get("version")} %}
{%- do release.update({"canary": asked["canary"]}) if asked.get("canary") is mapping %}
{%- do release.update({"settings": asked["settings"]}) if asked.get("settings") is mapping %}
{#- Who sent the event (the minion whose ID the master checked, or "master" for one
    fired on the master itself). The controller releases what a beacon's KV key says
    (only the controller's and operators' tokens may write it); any other request only
    from those master config cabify_controller:release_requesters lists. #}
{%- do release.update({"requester": data.get("id", "master")}) %}
{#- Every minion's beacon sees a change of the key: the controller releases once a change. #}
{%- do release.update({"trigger": asked["key"]}) if tag.startswith("salt/beacon/") and asked.get("key") %}

cabify-reactor-release-orchestrated:
  runner.state.orchestrate:
    - args:
      - mods: orch.{{ "canary" if asked.get("strategy") == "canary" else "rolling" }}
      - pillar:
          release: {{ release | json }}
