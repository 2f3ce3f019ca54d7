{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata as haproxy with context %}

include:
  - {{ tplroot }}.install

{#- Checked with `haproxy -c` on a temporary file first: a config HAProxy would reject
    is never installed, and the running HAProxy keeps serving the old one. #}
haproxy-config-file-managed:
  file.managed:
    - name: {{ haproxy.config_file }}
    - source: salt://{{ tplroot }}/files/haproxy.cfg.jinja
    - template: jinja
    - context:
        haproxy: {{ haproxy | json }}
    - mode: "0644"
    - check_cmd: /usr/local/sbin/haproxy-check-config
    - require:
      - pkg: haproxy-install-pkg-installed
      - file: haproxy-install-check-script-managed
