{#- Consul on a fleet host (pillar/fleet.sls): a server on consul-server hosts, which
    wait for all of them before electing a leader, a client agent elsewhere; every
    agent binds to its host's address and joins the servers. -#}
{%- import_yaml "fleet.sls" as fleet %}
{%- set hosts = fleet.fleet.hosts %}
{%- set me = hosts[grains["id"]] %}
{%- set servers = [] %}
{%- for name, host in hosts | dictsort if "consul-server" in host.roles %}
{%-   do servers.append(host.address) %}
{%- endfor %}
{%- set server = "consul-server" in me.roles %}
consul:
  config:
    server: {{ server | json }}
    bootstrap_expect: {{ (servers | length if server else none) | json }}
    bind_addr: {{ me.address }}
    retry_join: {{ servers | json }}
