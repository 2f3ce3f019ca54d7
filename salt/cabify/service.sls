{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata as cabify with context %}

include:
  - {{ tplroot }}.install

cabify-service-pool-converged:
  cabify_pool.converged:
    - name: cabify
    - version: {{ cabify.version | string | json }}
    - replicas: {{ cabify.replicas }}
    - env: {{ cabify.env | json }}
    - resources: {{ cabify.resources | json }}
    - network: {{ cabify.network }}
    - healthy_timeout: {{ cabify.healthy_timeout }}
    - drain_timeout: {{ cabify.drain_timeout }}
    - release: {{ cabify.release | json }}
    - canary: {{ cabify.canary | json }}
    - require:
      - cabify_image: cabify-install-image-built
