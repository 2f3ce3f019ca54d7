{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata as registry with context %}

include:
  - {{ tplroot }}.install

{#- Rendered from data, so it is valid YAML; the registry reads nothing else. #}
registry-config-file-managed:
  file.serialize:
    - name: {{ registry.config_file }}
    - dataset: {{ registry.config | json }}
    - serializer: yaml
    - mode: "0644"
    - makedirs: true
    - require:
      - pkg: registry-install-pkg-installed
