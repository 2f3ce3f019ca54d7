{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata as common with context %}

common-clean-config-files-absent:
  file.absent:
    - names:
      - /etc/apt/apt.conf.d/20auto-upgrades
      - /etc/apt/apt.conf.d/51cabify-unattended-upgrades
      - /etc/logrotate.d/cabify-stack
      - /var/lib/apt/periodic/cabify-update-success-stamp
