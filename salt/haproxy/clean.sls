{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata as haproxy with context %}

haproxy-clean-service-dead:
  service.dead:
    - name: {{ haproxy.service.name }}
    - enable: false

haproxy-clean-pkg-removed:
  pkg.removed:
    - name: {{ haproxy.pkg }}
    - require:
      - service: haproxy-clean-service-dead

haproxy-clean-files-absent:
  file.absent:
    - names:
      - /usr/local/sbin/haproxy-check-config
      - {{ haproxy.config_file }}
      - {{ haproxy.server_state.file }}
    - require:
      - pkg: haproxy-clean-pkg-removed
