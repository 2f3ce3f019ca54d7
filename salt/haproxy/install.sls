{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata as haproxy with context %}

include:
  - {{ tplroot }}.valid

haproxy-install-pkg-installed:
  pkg.installed:
    - name: {{ haproxy.pkg }}
    - require:
      - stack_pillar: {{ tplroot }}-pillar-valid

haproxy-install-check-script-managed:
  file.managed:
    - name: /usr/local/sbin/haproxy-check-config
    - source: salt://{{ tplroot }}/files/haproxy-check-config.sh
    - mode: "0755"
    - require:
      - stack_pillar: {{ tplroot }}-pillar-valid
