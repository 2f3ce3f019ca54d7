{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata as registry with context %}

include:
  - {{ tplroot }}.install

{#- Rendered from data, so it is valid YAML; the registry reads nothing else. #}
registry-config-file-managed:
  file.serialize:
    - name: {{ registry.config_file }}
    - dataset: {{ registry.config | json }}
    - serializer: yaml
    - mode: "0644"
    - makedirs: true
    - require:
      - pkg: registry-install-pkg-installed
{%- if registry.service.init_script %}

registry-config-init-script-managed:
  file.managed:
    - name: /etc/init.d/{{ registry.service.name }}
    - source: salt://lib/daemon.init.jinja
    - template: jinja
    - context:
        formula: {{ tplroot }}
        name: {{ registry.service.name }}
        why: "its stop does not wait for the registry to exit"
        description: Docker image registry
        daemon: /usr/bin/docker-registry
        args: serve {{ registry.config_file }}
        user: {{ registry.service.user }}
        logfile: /var/log/docker-registry.log
        # The registry-service-answering state asks its API once it runs.
        ready: "true"
        start_timeout: 30
    - mode: "0755"
    - check_cmd: sh -n
    - require:
      - pkg: registry-install-pkg-installed
{%- endif %}
