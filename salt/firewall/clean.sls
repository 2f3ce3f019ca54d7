{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata as firewall with context %}

{#- Only the formula's own table goes: the rest of the ruleset stays. #}
firewall-clean-table-deleted:
  cmd.run:
    - name: nft delete table inet {{ firewall.table }}
    - onlyif: nft list table inet {{ firewall.table }}

firewall-clean-files-absent:
  file.absent:
    - names:
      - {{ firewall.rules_file }}
      - {{ firewall.loaded_marker }}
      - /etc/systemd/system/cabify-firewall.service
    - require:
      - cmd: firewall-clean-table-deleted
