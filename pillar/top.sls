{#- Every host gets the stack's pillar and the fleet's topology (fleet.sls, which
    orch.fleet and cabify.status read); the fleet's hosts also what their place in it
    makes of the formulas (fleet_host.sls). -#}
{%- import_yaml "fleet.sls" as fleet %}
base:
  '*':
    - stack
    - fleet
  {{ fleet.fleet.hosts | join(",") }}:
    - match: list
    - fleet_host
