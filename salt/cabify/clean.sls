{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata as cabify with context %}

{#- Zero replicas: each is drained from HAProxy and Consul before it stops. #}
cabify-clean-pool-empty:
  cabify_pool.converged:
    - name: cabify
    - version: {{ cabify.version | string | json }}
    - replicas: 0
    - drain_timeout: {{ cabify.drain_timeout }}
