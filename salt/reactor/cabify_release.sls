{#- A release was asked for: by an event `cabify/release/request` with data
    {"pool": "cabify", "version": "2"} (optionally "strategy": "canary", "canary":
    {canary settings} and "settings": {release settings}), or by the cabify_desired beacon when a Consul KV key
    cabify/desired/<pool> changed. Hand off to the orchestration of that strategy: a rolling
    one is decided by the release controller on the master, for the whole fleet. -#}
{%- set asked = data.get("data", data) %}
{%- set release = {"pool": asked.get("pool"), "version": asked.get("version")} %}
{%- do release.update({"canary": asked["canary"]}) if asked.get("canary") is mapping %}
{%- do release.update({"settings": asked["settings"]}) if asked.get("settings") is mapping %}
{#- Who asked, for the controller to check against master config
    cabify_controller:release_requesters: the minion that sent the event (the master
    checked its ID), or "master" for an event fired on the master itself. A KV change
    needs no such check: only the controller's and operators' tokens may write it. #}
{%- do release.update({"requester": data.get("id", "master")}) if tag == "cabify/release/request" %}
{#- Every minion's beacon sees a change of the key: the controller releases once a change. #}
{%- do release.update({"trigger": asked["key"]}) if tag.startswith("salt/beacon/") and asked.get("key") %}

cabify-reactor-release-orchestrated:
  runner.state.orchestrate:
    - args:
      - mods: orch.{{ "canary" if asked.get("strategy") == "canary" else "rolling" }}
      - pillar:
          release: {{ release | json }}
