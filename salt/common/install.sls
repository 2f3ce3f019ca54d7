{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata as common with context %}
{%- set stamp = "/var/lib/apt/periodic/cabify-update-success-stamp" %}

include:
  - {{ tplroot }}.valid

{#- Refresh the apt cache when it is older than apt:cache_valid_time seconds. #}
common-install-apt-cache-refreshed:
  cmd.run:
    - name: apt-get update -q && mkdir -p {{ stamp.rsplit("/", 1)[0] }} && touch {{ stamp }}
    - unless: test -n "$(find {{ stamp }} -newermt '-{{ common.apt.cache_valid_time }} seconds' 2>/dev/null)"
    - require:
      - stack_pillar: {{ tplroot }}-pillar-valid

common-install-pkgs-installed:
  pkg.installed:
    - pkgs: {{ common.pkgs | json }}
    - require:
      - cmd: common-install-apt-cache-refreshed
