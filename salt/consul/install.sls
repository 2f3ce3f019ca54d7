{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata as consul with context %}
{%- set install = consul.install %}

include:
  - {{ tplroot }}.valid

{%- if install.method == "apt" %}
{%- set mirror = salt["apt_source.debian_mirror"]() %}

consul-install-apt-source-managed:
  file.managed:
    - name: /etc/apt/sources.list.d/cabify-consul-{{ install.suite }}.sources
    - mode: "0644"
    - contents: |
        # Managed by Salt (consul formula): Debian {{ install.suite }} for consul only,
        # from the mirror this host already uses ({{ mirror }}); see the pin in
        # /etc/apt/preferences.d/cabify-consul.
        Types: deb
        URIs: {{ mirror }}
        Suites: {{ install.suite }}
        Components: main
        Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
    - require:
      - stack_pillar: {{ tplroot }}-pillar-valid

consul-install-apt-pin-managed:
  file.managed:
    - name: /etc/apt/preferences.d/cabify-consul
    - mode: "0644"
    - contents: |
        # Managed by Salt (consul formula): take only {{ install.pkg }} from {{ install.suite }}.
        Package: *
        Pin: release n={{ install.suite }}
        Pin-Priority: -10

        Package: {{ install.pkg }}
        Pin: release n={{ install.suite }}
        Pin-Priority: 500
    - require:
      - stack_pillar: {{ tplroot }}-pillar-valid

consul-install-apt-cache-refreshed:
  cmd.run:
    - name: apt-get update -q
    - onchanges:
      - file: consul-install-apt-source-managed
      - file: consul-install-apt-pin-managed

consul-install-pkg-installed:
  pkg.installed:
    - name: {{ install.pkg }}
    - require:
      - file: consul-install-apt-source-managed
      - file: consul-install-apt-pin-managed
      - cmd: consul-install-apt-cache-refreshed

{%- else %}

consul-install-deb-downloaded:
  file.managed:
    - name: /var/cache/cabify/consul.deb
    - source: {{ install.url }}
    - source_hash: sha256={{ install.sha256 }}
    - makedirs: true
    - require:
      - stack_pillar: {{ tplroot }}-pillar-valid

consul-install-pkg-installed:
  pkg.installed:
    - sources:
      - {{ install.pkg }}: /var/cache/cabify/consul.deb
    - require:
      - file: consul-install-deb-downloaded
{%- endif %}

consul-install-check-script-managed:
  file.managed:
    - name: /usr/local/sbin/consul-check-config
    - source: salt://{{ tplroot }}/files/consul-check-config.sh
    - mode: "0755"
    - require:
      - stack_pillar: {{ tplroot }}-pillar-valid

consul-install-log-dir-managed:
  file.directory:
    - name: {{ consul.config.log_file.rsplit("/", 1)[0] }}
    - user: {{ consul.service.user }}
    - group: {{ consul.service.user }}
    - mode: "0750"
    - require:
      - pkg: consul-install-pkg-installed

consul-install-data-dir-managed:
  file.directory:
    - name: {{ consul.config.data_dir }}
    - user: {{ consul.service.user }}
    - group: {{ consul.service.user }}
    - mode: "0750"
    - require:
      - pkg: consul-install-pkg-installed
