{#- The app's images, built on this host: the versions the pools run, or those that
    cabify:build:versions names (orch.build). With cabify:build:push (the build host
    of a fleet), each is pushed to cabify:image:push_registry as well. -#}
{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata as cabify with context %}
{%- set image = cabify.image %}
{%- set running = cabify.pools.values() | map(attribute="version") | map("string") | list %}
{%- set versions = (cabify.build.versions | map("string") | list or running) | unique | sort | list %}

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

{%- for version in versions %}

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
{%-   if cabify.build.push %}

cabify-build-image-{{ version }}-pushed:
  cabify_image.pushed:
    - version: {{ version | json }}
    - registry: {{ image.push_registry }}
    - require:
      - cabify_image: cabify-install-image-{{ version }}-built
{%-   endif %}
{%- endfor %}
{%- if cabify.build.push and versions %}

{#- The registry keeps the newest image:keep versions beside those this pillar's pools
    run; the layers of those it drops are freed by its garbage collection (this is its
    host; the registry keeps no blob cache, so a version pushed again after its layers
    were collected is uploaded whole). #}
cabify-build-registry-pruned:
  cabify_image.registry_pruned:
    - registry: {{ image.push_registry }}
    - keep: {{ image.keep }}
    - protect: {{ (versions + running) | unique | list | json }}
    - require:
{%-   for version in versions %}
      - cabify_image: cabify-build-image-{{ version }}-pushed
{%-   endfor %}

cabify-build-registry-garbage-collected:
  cmd.run:
    - name: docker-registry garbage-collect {{ salt["pillar.get"]("registry:config_file", "/etc/docker/registry/config.yml") }}
    - onchanges:
      - cabify_image: cabify-build-registry-pruned
{%- endif %}
