{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata as keepalived with context %}

include:
  - {{ tplroot }}.install

{#- Checked with `keepalived -t` on a temporary file first: a config keepalived would
    reject never replaces the running one's. #}
keepalived-config-file-managed:
  file.managed:
    - name: {{ keepalived.config_file }}
    - source: salt://{{ tplroot }}/files/keepalived.conf.jinja
    - template: jinja
    - context:
        keepalived: {{ keepalived | json }}
        router_id: {{ grains["id"] | json }}
    - mode: "0640"
    - makedirs: true
    - check_cmd: keepalived --config-test -f
    - require:
      - pkg: keepalived-install-pkg-installed
      - file: keepalived-install-check-script-managed
{%- if keepalived.service.init_script %}

keepalived-config-init-script-managed:
  file.managed:
    - name: /etc/init.d/{{ keepalived.service.name }}
    - source: salt://lib/daemon.init.jinja
    - template: jinja
    - context:
        formula: {{ tplroot }}
        name: {{ keepalived.service.name }}
        why: "keepalived runs in the foreground under start-stop-daemon, which tracks it"
        description: keepalived (VRRP)
        daemon: /usr/sbin/keepalived
        args: --dont-fork --log-console --log-detail -f {{ keepalived.config_file }}
        user: root
        logfile: /var/log/keepalived.log
        ready: pidof keepalived
        start_timeout: {{ keepalived.start_timeout }}
    - mode: "0755"
    - check_cmd: sh -n
    - require:
      - pkg: keepalived-install-pkg-installed
{%- endif %}
