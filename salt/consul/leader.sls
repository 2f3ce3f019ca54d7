{#- The cluster has a leader, as this host's agent sees it: what a registration or a
    KV write needs. Not part of the consul formula (the first server of a cluster must
    not fail while the others start): orch.fleet applies it once every agent runs, and
    the cabify formula waits on it before its pools register. -#}
{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata as consul with context %}

consul-leader-elected:
  stack_http.answering:
    - name: http://{{ consul.api.host }}:{{ consul.config.ports.http }}/v1/status/leader
    - match: '"[^"]+:[0-9]+"'
    - timeout: {{ consul.start_timeout }}
