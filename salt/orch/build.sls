{#- Build the app's image of a version on the build host (role registry) and push it
    to the registry there, without releasing it (the seed's "CI image builds"):
      salt-run state.orchestrate orch.build pillar='{"build": {"version": "3"} }'
    Without build:version, the versions the pools run. App hosts then pull it by the
    digest the registry gives (cabify:image:registry). -#}
{%- set build = salt["pillar.get"]("build", {}) %}
{%- set versions = [build.version | string] if build.get("version") is not none else [] %}

cabify-orch-build-pushed:
  salt.state:
    - tgt: {{ build.get("target", "G@roles:registry") | json }}
    - tgt_type: compound
    - sls: cabify.build
    - timeout: 900
    - pillar:
        cabify:
          build:
            versions: {{ versions | json }}
            push: true
