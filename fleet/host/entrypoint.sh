#!/bin/sh
# A fleet host's first process: its minion's configuration from the environment
# (SALT_MASTER, ROLES as a comma list, and SALT_MASTER_PORT / SALT_PUBLISH_PORT when the
# master listens elsewhere than 4506 / 4505), then the salt-minion in the foreground. Any
# other service of the host (Consul, HAProxy, dockerd) is started by the formulas.
set -eu
mkdir -p /etc/salt/minion.d
{
  echo "master: ${SALT_MASTER:?}"
  echo "master_port: ${SALT_MASTER_PORT:-4506}"
  echo "publish_port: ${SALT_PUBLISH_PORT:-4505}"
  echo "id: $(hostname)"
  echo "grains:"
  echo "  roles:"
  echo "${ROLES:?}" | tr ',' '\n' | sed 's/^/    - /'
  echo "state_output: changes"
  # No systemd here: Salt drives the init.d scripts (conf/minion-sysvinit.yaml).
  echo "disable_modules: [systemd_service]"
  echo "providers: {service: debian_service}"
} > /etc/salt/minion.d/fleet.conf
exec /opt/cabify-salt/venv/bin/salt-minion --log-level=warning
