{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata as consul with context %}

consul-clean-service-dead:
  service.dead:
    - name: {{ consul.service.name }}
    - enable: false

consul-clean-pkg-removed:
  pkg.removed:
    - name: {{ consul.install.pkg }}
    - require:
      - service: consul-clean-service-dead

consul-clean-files-absent:
  file.absent:
    - names:
      - /etc/consul.d/consul.json
      - /etc/consul.d/gossip.json
      - /etc/consul.d/tls
      - /usr/local/sbin/consul-check-config
      - /etc/apt/sources.list.d/cabify-consul-{{ consul.install.suite }}.sources
      - /etc/apt/preferences.d/cabify-consul
    - require:
      - pkg: consul-clean-pkg-removed
