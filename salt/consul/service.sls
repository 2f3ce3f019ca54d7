{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata as consul with context %}
{%- set api = "http://" ~ consul.api.host ~ ":" ~ consul.config.ports.http %}

include:
  - {{ tplroot }}.config

consul-service-running:
  service.running:
    - name: {{ consul.service.name }}
    - enable: {{ consul.service.enable | json }}
    - require:
      - sls: {{ tplroot }}.config
    - watch:
      - file: consul-config-file-serialized

{#- The init script says "done" even when the agent dies at once: trust the API. #}
consul-service-leader-elected:
  stack_http.answering:
    - name: {{ api }}/v1/status/leader
    - match: '"[^"]+:[0-9]+"'
    - timeout: {{ consul.start_timeout }}
    - require:
      - service: consul-service-running
