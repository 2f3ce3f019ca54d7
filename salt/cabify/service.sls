{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata as cabify with context %}

include:
  - {{ tplroot }}.install
  {#- Registrations need the Consul cluster's leader: in a fleet converged all at once,
      an app host's pools wait for the servers' quorum instead of failing. #}
  - consul.leader

{%- for name, pool in cabify.pools | dictsort %}

cabify-service-pool-{{ name }}-converged:
  cabify_pool.converged:
    - name: {{ name }}
    - version: {{ pool.version | string | json }}
    - replicas: {{ pool.replicas }}
    - env: {{ pool.env | json }}
    - resources: {{ pool.resources | json }}
    - network: {{ pool.network }}
    - healthy_timeout: {{ pool.healthy_timeout }}
    - drain_timeout: {{ pool.drain_timeout }}
    - release: {{ pool.release | json }}
    - canary: {{ pool.canary | json }}
    - require:
      - cabify_image: cabify-install-image-{{ pool.version }}-built
      - stack_http: consul-leader-elected
{%- endfor %}
