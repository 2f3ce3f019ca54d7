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
    # It holds this agent's token and the gossip key: no diff in any output or log.
    - show_changes: false
    - require:
      - pkg: consul-install-pkg-installed
      - file: consul-install-check-script-managed
{%- if consul.tls.ca and consul.tls.cert and consul.tls.key %}
      - file: consul-config-tls-dir-managed
{%- endif %}

{%- if consul.gossip.key %}

{#- Read by the agent with consul.json; not watched by the service: a key only matters
    to an agent without a keyring (a new host), so a rotation restarts nothing. #}
consul-config-gossip-key-managed:
  file.serialize:
    - name: /etc/consul.d/gossip.json
    - dataset:
        encrypt: {{ consul.gossip.key | json }}
    - serializer: json
    - user: root
    - group: {{ consul.service.user }}
    - mode: "0640"
    - show_changes: false
    - require:
      - pkg: consul-install-pkg-installed
    - require_in:
      - file: consul-config-file-serialized
{%- endif %}
{%- if consul.tls.ca and consul.tls.cert and consul.tls.key %}

{#- RPC's TLS material from the master's CA (ext_pillar cabify_consul_secrets). #}
consul-config-tls-dir-managed:
  file.directory:
    - name: {{ consul.tls.dir }}
    - user: root
    - group: {{ consul.service.user }}
    - mode: "0750"
    - require:
      - pkg: consul-install-pkg-installed
{%-   for file, (content, mode) in {"ca.pem": (consul.tls.ca, "0644"), "agent.pem": (consul.tls.cert, "0644"),
                                     "agent-key.pem": (consul.tls.key, "0640")} | dictsort %}

consul-config-tls-{{ file }}-managed:
  file.managed:
    - name: {{ consul.tls.dir }}/{{ file }}
    - contents: {{ content | json }}
    - user: root
    - group: {{ consul.service.user }}
    - mode: "{{ mode }}"
    - show_changes: false
    - require:
      - file: consul-config-tls-dir-managed
    - require_in:
      - file: consul-config-file-serialized
{%-   endfor %}
{%- endif %}

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
        ready: curl -s -o /dev/null -m 2 {{ api }}/v1/status/leader
        start_timeout: {{ consul.start_timeout }}
    - mode: "0755"
    - check_cmd: sh -n
    - require:
      - pkg: consul-install-pkg-installed
{%- endif %}
