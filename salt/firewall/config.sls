{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata as firewall with context %}

include:
  - {{ tplroot }}.install

{#- Rendered from the merged map and this host's roles, and checked with `nft -c`
    first: a file nft would reject never replaces the last good one. #}
firewall-config-rules-file-managed:
  file.managed:
    - name: {{ firewall.rules_file }}
    - source: salt://{{ tplroot }}/files/firewall.nft.jinja
    - template: jinja
    - context:
        firewall: {{ firewall | json }}
        host_roles: {{ grains.get("roles", []) | json }}
    - mode: "0600"
    - makedirs: true
    - check_cmd: nft -c -f
    - require:
      - pkg: firewall-install-pkg-installed
