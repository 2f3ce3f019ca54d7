{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata as keepalived with context %}

keepalived-clean-service-dead:
  service.dead:
    - name: {{ keepalived.service.name }}
    - enable: false

keepalived-clean-pkg-removed:
  pkg.removed:
    - name: {{ keepalived.pkg }}
    - require:
      - service: keepalived-clean-service-dead

keepalived-clean-files-absent:
  file.absent:
    - names:
      - {{ keepalived.config_file }}
      - {{ keepalived.check.script }}
{%- if keepalived.service.init_script %}
      - /etc/init.d/{{ keepalived.service.name }}
{%- endif %}
    - require:
      - pkg: keepalived-clean-pkg-removed
