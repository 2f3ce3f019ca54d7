{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata as cabify with context %}
{%- set image = cabify.image %}

include:
  - {{ tplroot }}.valid

{%- if image.build_base %}

cabify-install-debootstrap-installed:
  pkg.installed:
    - name: debootstrap
    - require:
      - stack_pillar: {{ tplroot }}-pillar-valid
{%- endif %}

cabify-install-sources-managed:
  file.recurse:
    - name: {{ image.source_dir }}
    - source: salt://{{ tplroot }}/files/app
    - clean: true
    - makedirs: true
    - require:
      - stack_pillar: {{ tplroot }}-pillar-valid

{#- One image per version that a pool runs. #}
{%- for version in cabify.pools.values() | map(attribute="version") | map("string") | unique | sort %}

cabify-install-image-{{ version }}-built:
  cabify_image.built:
    - version: {{ version | json }}
    - source_dir: {{ image.source_dir }}
    - base_image: {{ image.base }}
{%-   if image.build_base %}
    - base_mirror: {{ salt["apt_source.debian_mirror"]() }}
    - base_suite: {{ image.suite }}
{%-   endif %}
    - require:
      - file: cabify-install-sources-managed
{%-   if image.build_base %}
      - pkg: cabify-install-debootstrap-installed
{%-   endif %}
    - require_in:
      - cabify_image: cabify-install-images-pruned
{%- endfor %}

{#- Old versions' images go: the newest image:keep stay, beside those in use. #}
cabify-install-images-pruned:
  cabify_image.pruned:
    - keep: {{ image.keep }}
    - protect: {{ cabify.pools.values() | map(attribute="version") | map("string") | unique | list | json }}
