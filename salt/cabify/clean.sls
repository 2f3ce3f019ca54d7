{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata as cabify with context %}

{#- Zero replicas in every pool: each is drained from HAProxy and Consul before it stops. #}
{%- for name, pool in cabify.pools | dictsort %}

cabify-clean-pool-{{ name }}-empty:
  cabify_pool.converged:
    - name: {{ name }}
    - version: {{ pool.version | string | json }}
    - replicas: 0
    - network: {{ pool.network }}
    - drain_timeout: {{ pool.drain_timeout }}

cabify-clean-pool-{{ name }}-network-absent:
  module.run:
    - cabify_docker.network_absent:
      - name: {{ pool.network }}
    - require:
      - cabify_pool: cabify-clean-pool-{{ name }}-empty
{%- endfor %}
