{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata as registry with context %}

registry-clean-service-dead:
  service.dead:
    - name: {{ registry.service.name }}
    - enable: false

registry-clean-pkg-removed:
  pkg.removed:
    - name: {{ registry.pkg }}
    - require:
      - service: registry-clean-service-dead

{#- The images it stored stay in storage:filesystem:rootdirectory. #}
registry-clean-config-absent:
  file.absent:
    - name: {{ registry.config_file }}
    - require:
      - pkg: registry-clean-pkg-removed
