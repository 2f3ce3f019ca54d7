{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata as haproxy with context %}

include:
  - {{ tplroot }}.config

{#- Configuration changes are applied by a reload (new process, old one finishes its
    connections), never a restart. Pool changes need neither: they come through DNS. #}
haproxy-service-running:
  service.running:
    - name: {{ haproxy.service.name }}
    - enable: {{ haproxy.service.enable | json }}
    - reload: true
    - require:
      - sls: {{ tplroot }}.config
    - watch:
      - file: haproxy-config-file-managed
