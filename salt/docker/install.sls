{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata as docker with context %}

include:
  - {{ tplroot }}.valid

docker-install-pkg-installed:
  pkg.installed:
    - name: {{ docker.pkg }}
    - require:
      - stack_pillar: {{ tplroot }}-pillar-valid
