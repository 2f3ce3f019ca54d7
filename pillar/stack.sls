# Pillar of the all-in-one host. The formulas' defaults (salt/*/defaults.yaml) fit it;
# set here only what differs. Every key is documented in salt/*/pillar.example.
haproxy:
  frontend:
    port: 80
consul:
  config:
    datacenter: dc1
