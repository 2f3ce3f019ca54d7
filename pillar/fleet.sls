# The fleet of container hosts that `make fleet` runs on this machine (scripts/fleet.sh):
# a Docker network of their own, and each host's address and roles. The machine
# itself is the network's gateway, where its salt-master listens.
fleet:
  network:
    name: cabify-fleet
    subnet: 10.213.0.0/24
    gateway: 10.213.0.1
  # The address clients use: held by one LB at a time (keepalived, role vrrp).
  vip: 10.213.0.100/24
  # The image registry on the machine (role registry), reached at the gateway.
  registry_port: 5000
  hosts:
    node1: {address: 10.213.0.11, roles: [app, consul-server]}
    node2: {address: 10.213.0.12, roles: [app, consul-server]}
    node3: {address: 10.213.0.13, roles: [app, consul-server]}
    lb1: {address: 10.213.0.21, roles: [lb, vrrp]}
    lb2: {address: 10.213.0.22, roles: [lb, vrrp]}
