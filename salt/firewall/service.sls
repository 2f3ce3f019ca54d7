{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata as firewall with context %}

include:
  - {{ tplroot }}.config

{#- Loaded when the live table is missing (a reboot, someone deleted it) or was
    loaded from another file. One `nft -f` transaction: established connections (the
    Salt connection this runs through among them) are accepted before and after. #}
firewall-service-rules-loaded:
  cmd.run:
    - name: >-
        nft -f {{ firewall.rules_file }}
        && mkdir -p {{ salt["file.dirname"](firewall.loaded_marker) }}
        && sha256sum {{ firewall.rules_file }} > {{ firewall.loaded_marker }}
    - unless: >-
        nft list table inet {{ firewall.table }} >/dev/null 2>&1
        && sha256sum --check --status {{ firewall.loaded_marker }}
    - require:
      - file: firewall-config-rules-file-managed
{%- if grains.get("init") == "systemd" %}

{#- At boot, before the network comes up. #}
firewall-service-unit-managed:
  file.managed:
    - name: /etc/systemd/system/cabify-firewall.service
    - contents: |
        # Managed by Salt (firewall formula).
        [Unit]
        Description=Cabify firewall (nftables table {{ firewall.table }})
        Before=network-pre.target
        Wants=network-pre.target
        [Service]
        Type=oneshot
        RemainAfterExit=yes
        ExecStart=/usr/sbin/nft -f {{ firewall.rules_file }}
        ExecStop=/usr/sbin/nft delete table inet {{ firewall.table }}
        [Install]
        WantedBy=multi-user.target
    - require:
      - file: firewall-config-rules-file-managed

firewall-service-unit-enabled:
  service.enabled:
    - name: cabify-firewall
    - require:
      - file: firewall-service-unit-managed
{%- endif %}
