{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata as keepalived with context %}

include:
  - {{ tplroot }}.valid

keepalived-install-pkg-installed:
  pkg.installed:
    - name: {{ keepalived.pkg }}
    - require:
      - stack_pillar: {{ tplroot }}-pillar-valid

keepalived-install-check-script-managed:
  file.managed:
    - name: {{ keepalived.check.script }}
    - source: salt://{{ tplroot }}/files/keepalived-check-haproxy.sh
    - template: jinja
    - context:
        check: {{ keepalived.check | json }}
    - mode: "0755"
    - require:
      - stack_pillar: {{ tplroot }}-pillar-valid
