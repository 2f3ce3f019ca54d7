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

{#- Answers before anything pushes to it. #}
registry-service-answering:
  http.wait_for_successful_query:
    - name: http://127.0.0.1:{{ registry.config.http.addr.rsplit(":", 1)[1] }}/v2/
    - status: 200
    - wait_for: 30
    - request_interval: 0.5
    - onchanges:
      - service: registry-service-running
