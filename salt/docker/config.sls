{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata as docker with context %}

include:
  - {{ tplroot }}.install

docker-config-daemon-json-serialized:
  file.serialize:
    - name: /etc/docker/daemon.json
    - dataset: {{ docker.daemon_json | json }}
    - serializer: json
    - serializer_opts:
      - indent: 2
    - mode: "0644"
    - makedirs: true
    - require:
      - pkg: docker-install-pkg-installed

{%- if docker.service.init_script %}

docker-config-init-script-managed:
  file.managed:
    - name: /etc/init.d/{{ docker.service.name }}
    - source: salt://lib/daemon.init.jinja
    - template: jinja
    - context:
        formula: {{ tplroot }}
        name: {{ docker.service.name }}
        why: "it dies on `ulimit -n 1048576` where the hard limit is lower"
        description: Docker engine
        daemon: /usr/sbin/dockerd
        args: -p /var/run/docker.pid
        user: root
        logfile: /var/log/docker.log
        ready: docker version
        start_timeout: {{ docker.start_timeout }}
    - mode: "0755"
    - check_cmd: sh -n
    - require:
      - pkg: docker-install-pkg-installed
{%- endif %}
