{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata as consul with context %}
{%- set api = "http://" ~ consul.api.host ~ ":" ~ consul.config.ports.http %}

include:
  - {{ tplroot }}.config

consul-service-running:
  service.running:
    - name: {{ consul.service.name }}
    - enable: {{ consul.service.enable | json }}
    - require:
      - sls: {{ tplroot }}.config
    - watch:
      - file: consul-config-file-serialized
{%- if consul.tls.ca and consul.tls.cert and consul.tls.key %}
      {#- A certificate the master made again (near its end) is used at once. #}
      - file: consul-config-tls-ca.pem-managed
      - file: consul-config-tls-agent.pem-managed
      - file: consul-config-tls-agent-key.pem-managed
{%- endif %}

{#- The init script says "done" even when the agent dies at once: trust the API. A
    lone server elects itself at once; in a cluster, a server waits for the others
    before a leader is elected, and a client for the servers: there the agent
    answering is what this host can check, and a highstate of the first server does
    not fail while the quorum forms. #}
{%- if consul.config.server and consul.config.get("bootstrap_expect", 1) == 1 %}
consul-service-leader-elected:
  stack_http.answering:
    - name: {{ api }}/v1/status/leader
    - match: '"[^"]+:[0-9]+"'
{%- else %}
consul-service-agent-answering:
  stack_http.answering:
    - name: {{ api }}/v1/agent/self
    {#- Without a token, an agent with ACLs answers that it may not say. #}
    - codes: [200, 403]
    - match: '"Member"|Permission denied'
{%- endif %}
    - timeout: {{ consul.start_timeout }}
    - require:
      - service: consul-service-running

{#- A lone server bootstraps Consul's ACLs (the master keeps the management token)
    and gets this project's policies and tokens, from the master's runner
    cabify_acl.ensure (peer_run). In a cluster, orch.fleet runs it once there is a
    leader. #}
{%- if consul.config.server and consul.config.get("bootstrap_expect", 1) == 1 and consul.config.get("acl", {}).get("enabled") %}

consul-service-acl-ensured:
  cabify_acl.ensured:
    - name: cabify_acl.ensure
    - require:
      - stack_http: consul-service-leader-elected
{%- endif %}
