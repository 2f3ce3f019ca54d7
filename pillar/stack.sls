# Pillar of the all-in-one host. The formulas' defaults (salt/*/defaults.yaml) fit it;
# set here only what differs. Every key is documented in salt/*/pillar.example.
consul:
  config:
    datacenter: dc1
# Two pools of the app, each with its own Consul service, HAProxy backend (and
# frontend port) and Docker network, scaled, released and healed on their own.
haproxy:
  backends:
    cabify:
      port: 80
    shop:
      port: 8081
cabify:
  pools:
    cabify:
      version: "1"
      replicas: 3
    shop:
      version: "1"
      replicas: 2
# Docker events of the pools' containers, drift between Docker and Consul, and what a
# release that died left behind become events that the master's reactor turns into a
# heal of the pool (salt/orch/heal.sls). Beacons run every second (no `interval`: Salt
# counts it in loop_interval units).
beacons:
  cabify_docker:
    - disable_during_state_run: true
  # `consul kv put cabify/desired/shop 3` releases version 3 of pool shop (orch.rolling).
  cabify_desired:
    - prefix: cabify/desired/
