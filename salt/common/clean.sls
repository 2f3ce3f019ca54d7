{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata as common with context %}

common-clean-config-files-absent:
  file.absent:
    - names:
      - /etc/apt/apt.conf.d/20auto-upgrades
      - /etc/apt/apt.conf.d/51cabify-unattended-upgrades
      - /etc/logrotate.d/cabify-stack
      - /var/lib/apt/periodic/cabify-update-success-stamp

{#- Debian's default back: man-db re-indexes at each package change. #}
common-clean-man-db-auto-update-restored:
  file.managed:
    - name: /var/lib/man-db/auto-update
    - replace: false
    - onlyif: test -d /var/lib/man-db
