{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata as docker with context %}

docker-clean-service-dead:
  service.dead:
    - name: {{ docker.service.name }}
    - enable: false

docker-clean-pkg-removed:
  pkg.removed:
    - name: {{ docker.pkg }}
    - require:
      - service: docker-clean-service-dead

docker-clean-config-absent:
  file.absent:
    - name: /etc/docker/daemon.json
    - require:
      - pkg: docker-clean-pkg-removed
