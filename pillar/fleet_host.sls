{#- What a fleet host's place in pillar/fleet.sls makes of the formulas:
    - Consul: a server on consul-server hosts, which wait for all of them before
      electing a leader, a client agent elsewhere; every agent binds to its host's
      address and joins the servers. Servers force out a node that has been failed
      (a host that died) for 15 s, so that its instances leave the catalog within
      the pools' deregister_critical_after (30 s) of its death: failure detection
      takes about 5 s, the schedule runs every 5 s.
    - App hosts: replicas published on the host's address; images pulled by digest
      from the registry on the machine (the network's gateway), which their dockerd
      reaches over plain HTTP.
    - LB hosts of the VRRP pair: the fleet's virtual address on the interface that
      holds the host's fleet address, unicast adverts to the other LB, the first LB
      (by name) first to hold the address;
    - LB hosts: the stats page on the host's address, for the master's controller;
      each pool's stable slots derived from its replicas on every app host
      plus a release's surge (max_parallel new replicas on each app host at once, the
      most a release run host by host, or all at once, adds). -#}
{%- import_yaml "fleet.sls" as fleet %}
{%- import_yaml "stack.sls" as stack %}
{%- set hosts = fleet.fleet.hosts %}
{%- set me = hosts[grains["id"]] %}
{%- set registry = fleet.fleet.network.gateway ~ ":" ~ fleet.fleet.registry_port %}
{%- set servers = [] %}
{%- set apps = [] %}
{%- set vrrp = [] %}
{%- for name, host in hosts | dictsort %}
{%-   do servers.append(host.address) if "consul-server" in host.roles %}
{%-   do apps.append(name) if "app" in host.roles %}
{%-   do vrrp.append(name) if "vrrp" in host.roles %}
{%- endfor %}
{%- set server = "consul-server" in me.roles %}
consul:
  config:
    server: {{ server | json }}
    bootstrap_expect: {{ (servers | length if server else none) | json }}
    bind_addr: {{ me.address }}
{%- if server %}
    {#- The master's release controller reaches the servers' HTTP API on the fleet's
        network (issue 15 closes it with ACLs); agents keep loopback for their host. #}
    client_addr: "127.0.0.1 {{ me.address }}"
{%- endif %}
    retry_join: {{ servers | json }}
{%- if server %}
schedule:
  cabify-consul-reap-failed-nodes:
    function: cabify_consul.reap_failed_nodes
    seconds: 5
    maxrunning: 1
    return_job: false
    kwargs:
      after: 15
{%- endif %}
{%- if "app" in me.roles %}
docker:
  daemon_json:
    insecure-registries: [{{ registry | json }}]
cabify:
  image:
    registry: {{ registry | json }}
  publish:
    address: {{ me.address }}
{%- endif %}
{%- if "lb" in me.roles %}
haproxy:
  {#- The master's release controller (at the network's gateway) reads each LB's
      figures on its stats page many times a second, and drains a failing canary
      there (cabify_lb.stats_url). #}
  stats:
    bind: {{ me.address }}
    admin_from: [{{ fleet.fleet.network.gateway }}]
  backends:
{%-   for name, pool in stack.cabify.pools | dictsort %}
    {{ name }}:
      replicas: {{ (pool.replicas | default(3)) * (apps | length) }}
      surge: {{ ((pool.release | default({})).max_parallel | default(1)) * (apps | length) }}
      slots: null
{%-   endfor %}
{%- endif %}
{%- if "vrrp" in me.roles %}
{%-   set peers = [] %}
{%-   for name in vrrp if name != grains["id"] %}
{%-     do peers.append(hosts[name].address) %}
{%-   endfor %}
{%-   set interfaces = [] %}
{%-   for name, addresses in grains.get("ip4_interfaces", {}) | dictsort if me.address in addresses %}
{%-     do interfaces.append(name) %}
{%-   endfor %}
keepalived:
  vrrp:
    interface: {{ (interfaces + ["eth0"]) | first }}
    virtual_ipaddresses: [{{ fleet.fleet.vip }}]
    priority: {{ [150 - 50 * vrrp.index(grains["id"]), 1] | max }}
    unicast_src_ip: {{ me.address }}
    unicast_peers: {{ peers | json }}
{%- endif %}
