# Formulas by role. A host's roles are its `roles` grain, a list of consul-server, lb,
# vrrp (an LB of the pair that shares the virtual address), app, registry and master; the all-in-one host of `make up` has every role
# (conf/minion.yaml). Every host runs Consul (a server on consul-server hosts, a client
# agent elsewhere) and the firewall, which opens what its roles serve.
base:
  '*':
    - common
    - consul
    - firewall
  'G@roles:app or G@roles:registry':
    - match: compound
    - docker
  'roles:lb':
    - match: grain
    - haproxy
  'roles:vrrp':
    - match: grain
    - keepalived
  'roles:registry':
    - match: grain
    - registry
  'roles:app':
    - match: grain
    - cabify
