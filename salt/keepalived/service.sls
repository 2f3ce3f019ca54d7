{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata as keepalived with context %}

include:
  - {{ tplroot }}.config

{#- A new config is applied by a reload (SIGHUP): the instance keeps its state, the
    address stays where it is unless the new priorities say otherwise. #}
keepalived-service-running:
  service.running:
    - name: {{ keepalived.service.name }}
    - enable: {{ keepalived.service.enable | json }}
    - reload: true
    - require:
      - sls: {{ tplroot }}.config
    - watch:
      - file: keepalived-config-file-managed
{%- if keepalived.service.init_script %}
      - file: keepalived-config-init-script-managed
{%- endif %}
