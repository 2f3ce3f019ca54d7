{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata as firewall with context %}

include:
  - {{ tplroot }}.valid

firewall-install-pkg-installed:
  pkg.installed:
    - name: {{ firewall.pkg }}
    - require:
      - stack_pillar: {{ tplroot }}-pillar-valid
