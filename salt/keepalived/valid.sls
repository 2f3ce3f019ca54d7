{#- Gate: the merged data of this formula is valid, or none of its states run. -#}
{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata with context %}

{{ tplroot }}-pillar-valid:
  stack_pillar.valid:
    - formula: {{ tplroot }}
    - data: {{ mapdata | json }}
