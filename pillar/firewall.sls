{#- Who may reach what (the firewall formula), from the fleet's topology (fleet.sls)
    and the pools' frontends (stack.sls): every host of the fleet (by address, not
    anything else on its network) may reach the others' Consul gossip and the
    master's Salt ports and registry, the LBs the app hosts' replicas, the master
    (the fleet network's gateway) the LBs' stats pages and the Consul servers' HTTP
    API. -#}
{%- import_yaml "fleet.sls" as fleet %}
{%- import_yaml "stack.sls" as stack %}
{%- set hosts = fleet.fleet.hosts %}
{%- set lbs = [] %}
{%- set members = [] %}
{%- for name, host in hosts | dictsort %}
{%-   do members.append(host.address) %}
{%-   do lbs.append(host.address) if "lb" in host.roles %}
{%- endfor %}
firewall:
  sources:
    fleet: {{ members | json }}
    lbs: {{ lbs | json }}
    masters: [{{ fleet.fleet.network.gateway }}]
  # Remote access: ssh, and the agent (port 2024) through which this project's CI and
  # development machines are driven.
  management: [22, 2024]
  roles:
    lb:
      frontends:
        ports: {{ stack.haproxy.backends.values() | map(attribute="port") | sort | json }}
