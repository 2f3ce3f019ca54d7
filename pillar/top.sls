{#- Every host gets the stack's pillar, the fleet's topology (fleet.sls, which
    orch.fleet and cabify.status read) and who may reach what (firewall.sls); load
    balancers their minion's own jobs (lb.sls); the fleet's hosts also what their place
    in it makes of the formulas (fleet_host.sls). -#}
{%- import_yaml "fleet.sls" as fleet %}
base:
  '*':
    - stack
    - fleet
    - firewall
  'roles:lb':
    - match: grain
    - lb
  {{ fleet.fleet.hosts | join(",") }}:
    - match: list
    - fleet_host
