{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata as haproxy with context %}

include:
  - {{ tplroot }}.config

{#- What the running HAProxy knows of every server is saved right before a reload, so
    the new process starts from it (load-server-state-from-file), Consul up or not. #}
haproxy-service-server-state-saved:
  module.run:
    - cabify_lb.save_server_state:
      - path: {{ haproxy.server_state.file }}
    - onchanges:
      - file: haproxy-config-file-managed

{#- Configuration changes are applied by a reload (new process, old one finishes its
    connections), never a restart. Pool changes need neither: they come through DNS. #}
haproxy-service-running:
  service.running:
    - name: {{ haproxy.service.name }}
    - enable: {{ haproxy.service.enable | json }}
    - reload: true
    - require:
      - sls: {{ tplroot }}.config
      - module: haproxy-service-server-state-saved
    - watch:
      - file: haproxy-config-file-managed
