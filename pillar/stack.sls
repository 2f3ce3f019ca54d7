# Pillar of the all-in-one host. The formulas' defaults (salt/*/defaults.yaml) fit it;
# set here only what differs. Every key is documented in salt/*/pillar.example.
haproxy:
  frontend:
    port: 80
consul:
  config:
    datacenter: dc1
cabify:
  version: "1"
  replicas: 3
# Docker events of the pool's containers, and drift between Docker and Consul, become
# events that the master's reactor turns into a heal of the pool (salt/orch/heal.sls).
# Beacons run every second (no `interval`: Salt counts it in loop_interval units).
beacons:
  cabify_docker:
    - pool: cabify
    - disable_during_state_run: true
  # `consul kv put cabify/desired/version 3` releases version 3 (orch.rolling).
  cabify_desired:
    - key: cabify/desired/version
