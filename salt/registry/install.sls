{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata as registry with context %}

include:
  - {{ tplroot }}.valid

registry-install-pkg-installed:
  pkg.installed:
    - name: {{ registry.pkg }}
    - require:
      - stack_pillar: {{ tplroot }}-pillar-valid
