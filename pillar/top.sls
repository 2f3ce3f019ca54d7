{#- Every host gets the stack's pillar; the fleet's hosts (pillar/fleet.sls) also what
    their place in it makes of Consul. -#}
{%- import_yaml "fleet.sls" as fleet %}
base:
  '*':
    - stack
  {{ fleet.fleet.hosts | join(",") }}:
    - match: list
    - fleet_consul
