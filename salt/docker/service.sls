{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata as docker with context %}

include:
  - {{ tplroot }}.config

{#- A daemon.json change restarts dockerd; live-restore keeps the containers running. #}
docker-service-running:
  service.running:
    - name: {{ docker.service.name }}
    - enable: {{ docker.service.enable | json }}
    - require:
      - sls: {{ tplroot }}.config
    - watch:
      - file: docker-config-daemon-json-serialized
