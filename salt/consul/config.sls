{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata as consul with context %}

include:
  - {{ tplroot }}.install

{#- Written as data, checked by `consul validate` on a temporary file first: a config
    the agent would reject never replaces the live one. #}
consul-config-file-serialized:
  file.serialize:
    - name: /etc/consul.d/consul.json
    - dataset: {{ consul.config | json }}
    - serializer: json
    - serializer_opts:
      - indent: 2
      - sort_keys: true
    - user: root
    - group: {{ consul.service.user }}
    - mode: "0640"
    - check_cmd: /usr/local/sbin/consul-check-config
    - tmp_ext: .json
    - require:
      - pkg: consul-install-pkg-installed
      - file: consul-install-check-script-managed

{%- if consul.service.init_script %}
{%- set api = "http://" ~ consul.api.host ~ ":" ~ consul.config.ports.http %}

consul-config-init-script-managed:
  file.managed:
    - name: /etc/init.d/{{ consul.service.name }}
    - source: salt://lib/daemon.init.jinja
    - template: jinja
    - context:
        formula: {{ tplroot }}
        name: {{ consul.service.name }}
        why: "its pipexec command line is refused on Debian 12"
        description: Consul agent
        daemon: /usr/bin/consul
        args: agent -config-dir=/etc/consul.d
        user: {{ consul.service.user }}
        logfile: {{ consul.config.log_file.rsplit("/", 1)[0] }}/agent.out
        ready: /usr/bin/consul members -http-addr={{ api }}
        start_timeout: {{ consul.start_timeout }}
    - mode: "0755"
    - check_cmd: sh -n
    - require:
      - pkg: consul-install-pkg-installed
{%- endif %}
