# Formulas by role. A host's roles are its `roles` grain, a list of consul-server, lb,
# app and registry; the all-in-one host of `make up` has every role (conf/minion.yaml).
# Every host runs Consul: a server on consul-server hosts, a client agent elsewhere.
base:
  '*':
    - common
    - consul
  'G@roles:app or G@roles:registry':
    - match: compound
    - docker
  'roles:lb':
    - match: grain
    - haproxy
  'roles:registry':
    - match: grain
    - registry
  'roles:app':
    - match: grain
    - cabify
