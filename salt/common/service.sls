{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata as common with context %}

include:
  - {{ tplroot }}.config

{#- cron runs the daily apt (unattended-upgrades) and logrotate jobs where no
    systemd timers do. #}
common-service-cron-running:
  service.running:
    - name: {{ common.service.name }}
    - enable: {{ common.service.enable | json }}
    - require:
      - sls: {{ tplroot }}.config
