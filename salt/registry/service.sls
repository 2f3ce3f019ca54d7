{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata as registry with context %}

include:
  - {{ tplroot }}.config

registry-service-running:
  service.running:
    - name: {{ registry.service.name }}
    - enable: {{ registry.service.enable | json }}
    - require:
      - sls: {{ tplroot }}.config
    - watch:
      - file: registry-config-file-managed
{%- if registry.service.init_script %}
      - file: registry-config-init-script-managed
{%- endif %}

{#- The init script returns once the registry runs; trust its API. #}
registry-service-answering:
  stack_http.answering:
    - name: http://127.0.0.1:{{ registry.config.http.addr.rsplit(":", 1)[1] }}/v2/
    - match: "{}"
    - timeout: 30
    - require:
      - service: registry-service-running
