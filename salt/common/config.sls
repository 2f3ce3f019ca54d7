{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata as common with context %}

include:
  - {{ tplroot }}.install

common-config-unattended-upgrades-periodic:
  file.managed:
    - name: /etc/apt/apt.conf.d/20auto-upgrades
    - mode: "0644"
    - contents: |
        // Managed by Salt (common formula): daily package lists and security upgrades.
        APT::Periodic::Update-Package-Lists "{{ 1 if common.unattended_upgrades.enabled else 0 }}";
        APT::Periodic::Unattended-Upgrade "{{ 1 if common.unattended_upgrades.enabled else 0 }}";
    - require:
      - pkg: common-install-pkgs-installed

common-config-unattended-upgrades-origins:
  file.managed:
    - name: /etc/apt/apt.conf.d/51cabify-unattended-upgrades
    - mode: "0644"
    - contents: |
        // Managed by Salt (common formula): which origins are upgraded unattended.
        Unattended-Upgrade::Origins-Pattern {
        {%- for origin in common.unattended_upgrades.origins %}
          "{{ origin }}";
        {%- endfor %}
        };
    - require:
      - pkg: common-install-pkgs-installed

common-config-logrotate-file-managed:
  file.managed:
    - name: /etc/logrotate.d/cabify-stack
    - mode: "0644"
    - contents: |
        # Managed by Salt (common formula): logs of the services this project runs.
        {{ common.logrotate.paths | join(" ") }} {
          {{ common.logrotate.frequency }}
          rotate {{ common.logrotate.rotate }}
          missingok
          notifempty
          compress
          delaycompress
          copytruncate
        }
    - check_cmd: logrotate --debug
    - tmp_ext: .conf
    - require:
      - pkg: common-install-pkgs-installed

{#- man-db's flag file: present, dpkg's trigger re-indexes the man pages at each package
    change; absent, man-db's daily cron job alone does (debconf man-db/auto-update). #}
{%- if common.apt.man_db_auto_update %}
common-config-man-db-auto-update-on:
  file.managed:
    - name: /var/lib/man-db/auto-update
    - replace: false
    - onlyif: test -d /var/lib/man-db
{%- else %}
common-config-man-db-auto-update-off:
  file.absent:
    - name: /var/lib/man-db/auto-update
{%- endif %}
