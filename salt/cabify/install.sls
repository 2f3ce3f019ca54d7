{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata as cabify with context %}
{%- set image = cabify.image %}
{%- set versions = cabify.pools.values() | map(attribute="version") | map("string") | unique | sort %}

include:
  - {{ tplroot }}.valid
{%- if not image.registry %}
  - {{ tplroot }}.build
{%- endif %}

{#- One image per version that a pool runs: built here (build.sls), or, on a fleet's
    app host, pulled from the registry by digest. #}
{%- if image.registry %}
{%-   for version in versions %}

cabify-install-image-{{ version }}-built:
  cabify_image.pulled:
    - version: {{ version | json }}
    - registry: {{ image.registry }}
    - require:
      - stack_pillar: {{ tplroot }}-pillar-valid
{%-   endfor %}
{%- endif %}

{#- Old versions' images go: the newest image:keep stay, beside those in use. #}
cabify-install-images-pruned:
  cabify_image.pruned:
    - keep: {{ image.keep }}
    - protect: {{ versions | list | json }}
{%- if versions %}
    - require:
{%-   for version in versions %}
      - cabify_image: cabify-install-image-{{ version }}-built
{%-   endfor %}
{%- endif %}
