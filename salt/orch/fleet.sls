{#- Converge a fleet from nothing, in the order its parts need each other:
      salt-run state.orchestrate orch.fleet
    1. the build host (role registry) runs its registry and pushes the images the pools
       run;
    2. every fleet host gets common and Consul, all at once, so the servers form their
       quorum, and waits until its agent sees a leader;
    3. the master bootstraps Consul's ACLs (once) and makes every host's tokens
       (runner cabify_acl.ensure: the agents started with them, from pillar);
    4. every fleet host's highstate, all at once: Docker, HAProxy on LBs, the pools on
       app hosts (their images pulled from the registry by digest).
    The fleet's hosts are those of pillar fleet:hosts (pillar/fleet.sls); fleet:target,
    a list of minion IDs, overrides. -#}
{%- set target = salt["pillar.get"]("fleet:target", salt["pillar.get"]("fleet:hosts", {}) | join(",")) %}

cabify-orch-fleet-images-pushed:
  salt.state:
    - tgt: "G@roles:registry"
    - tgt_type: compound
    - sls:
      - registry
      - cabify.build
    - timeout: 900
    - pillar:
        cabify:
          build:
            push: true

cabify-orch-fleet-consul-running:
  salt.state:
    - tgt: {{ target | json }}
    - tgt_type: list
    - sls:
      - common
      - consul
    - timeout: 900

cabify-orch-fleet-consul-leader:
  salt.state:
    - tgt: {{ target | json }}
    - tgt_type: list
    - sls: consul.leader
    - require:
      - salt: cabify-orch-fleet-consul-running

cabify-orch-fleet-consul-acl-ensured:
  salt.runner:
    - name: cabify_acl.ensure
    - require:
      - salt: cabify-orch-fleet-consul-leader

cabify-orch-fleet-highstate:
  salt.state:
    - tgt: {{ target | json }}
    - tgt_type: list
    - highstate: true
    - timeout: 900
    - require:
      - salt: cabify-orch-fleet-images-pushed
      - salt: cabify-orch-fleet-consul-acl-ensured
