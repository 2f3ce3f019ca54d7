#!/usr/bin/env bash
# The fleet on this machine: Docker containers as hosts (pillar/fleet.sls), each with
# its own salt-minion, minions of the salt-master of `make up`.
#   scripts/fleet.sh up      build the host image once, start the hosts, accept their keys,
#                            point the master's release controller at them
#                            (master.d/cabify-fleet.conf: read by every salt-run at once,
#                            by the master daemon's reactor once it restarts)
#   scripts/fleet.sh down    remove the hosts, their volumes, keys, network and that file
#   scripts/fleet.sh answering   wait until every host answers (after a master restart)
# A host is started with the capability set that works on machines where --privileged
# is refused (../ENVIRONMENT.md "Container hosts"); app hosts get a volume for
# /var/lib/docker, where their own dockerd runs overlay2.
# Another master than make up's (the test suite's): SALT_CONFIG_DIR (its salt-key and
# salt), SALT_MASTER_PORT and SALT_PUBLISH_PORT (where it listens).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
VENV=${VENV:-/opt/cabify-salt/venv}
IMAGE=cabify-fleet-host
BASE=cabify-base:bookworm
SALT_CONFIG_DIR=${SALT_CONFIG_DIR:-/etc/salt}
say() { echo "fleet: $*"; }
salt_key() { "$VENV/bin/salt-key" -c "$SALT_CONFIG_DIR" "$@"; }
salt_cmd() { "$VENV/bin/salt" -c "$SALT_CONFIG_DIR" "$@"; }

fleet() {  # fleet <python expression over the pillar's `fleet` mapping>
  "$VENV/bin/python" -c "import sys, yaml; f = yaml.safe_load(open(sys.argv[1]))['fleet']; print($1)" \
    "$REPO/pillar/fleet.sls"
}
NETWORK=$(fleet "f['network']['name']")
HOSTS=$(fleet "' '.join(f['hosts'])")

image() {
  local digest
  digest=$(cat "$REPO/requirements.lock" "$REPO"/fleet/host/* | sha256sum | cut -c1-16)
  if [ "$(docker image inspect -f '{{index .Config.Labels "cabify.fleet-host"}}' "$IMAGE" 2>/dev/null)" = "$digest" ]; then
    return
  fi
  docker image inspect "$BASE" >/dev/null 2>&1 || { say "no $BASE image: run make up first" >&2; exit 1; }
  say "building $IMAGE (Debian 12 + a Salt venv)"
  local ctx; ctx=$(mktemp -d)
  trap 'rm -rf "$ctx"' RETURN
  cp "$REPO"/fleet/host/* "$ctx/"
  # Wheels from this machine's package index: the image itself builds with no index.
  "$VENV/bin/pip" wheel -q --disable-pip-version-check -c "$REPO/requirements.lock" -w "$ctx/wheels" \
    salt docker py-consul
  docker build -q --label "cabify.fleet-host=$digest" --build-arg "BASE=$BASE" -t "$IMAGE" "$ctx" \
    >"$ctx/build.log" 2>&1 || { cat "$ctx/build.log" >&2; exit 1; }
}

network() {
  docker network inspect "$NETWORK" >/dev/null 2>&1 && return
  say "network $NETWORK $(fleet "f['network']['subnet']")"
  docker network create --subnet "$(fleet "f['network']['subnet']")" \
    --gateway "$(fleet "f['network']['gateway']")" "$NETWORK" >/dev/null
}

host() {  # host NAME: started, unless it runs
  local name=$1 container="cabify-fleet-$1" roles address volumes=()
  [ "$(docker inspect -f '{{.State.Running}}' "$container" 2>/dev/null)" = true ] && return
  docker rm -f "$container" >/dev/null 2>&1 || true
  # A new container makes a new key: a key this master holds for the name is stale.
  salt_key -y -d "$name" >/dev/null 2>&1 || true
  roles=$(fleet "','.join(f['hosts']['$name']['roles'])")
  address=$(fleet "f['hosts']['$name']['address']")
  [[ ",$roles," == *,app,* ]] && volumes=(-v "$container-docker:/var/lib/docker")
  say "host $name ($address, roles $roles)"
  docker run -d --name "$container" --hostname "$name" --init \
    --network "$NETWORK" --ip "$address" \
    --cap-add ALL --cap-drop SYS_RESOURCE \
    --security-opt seccomp=unconfined --security-opt apparmor=unconfined \
    --tmpfs /run --tmpfs /tmp -v /sys/fs/cgroup:/sys/fs/cgroup:rw "${volumes[@]}" \
    -e SALT_MASTER="$(fleet "f['network']['gateway']")" -e ROLES="$roles" \
    -e SALT_MASTER_PORT="${SALT_MASTER_PORT:-4506}" -e SALT_PUBLISH_PORT="${SALT_PUBLISH_PORT:-4505}" \
    --label cabify.fleet=host "$IMAGE" >/dev/null
}

answering() {  # every host answers test.ping (within 120 s)
  local deadline=$((SECONDS + 120)) answers
  until answers=$(salt_cmd -L "${HOSTS// /,}" --out=txt test.ping 2>/dev/null | grep -c True)
        [ "$answers" -eq "$(wc -w <<<"$HOSTS")" ]; do
    [ $SECONDS -lt $deadline ] || { say "not every host answers test.ping" >&2; exit 1; }
    sleep 1
  done
}

accept() {  # the hosts' keys, by name, once each has asked; then each answers
  local deadline=$((SECONDS + 120)) name
  for name in $HOSTS; do
    until salt_key -l acc --out=json 2>/dev/null | grep -q "\"$name\""; do
      if salt_key -l un --out=json 2>/dev/null | grep -q "\"$name\""; then
        salt_key -y -a "$name" >/dev/null
      fi
      [ $SECONDS -lt $deadline ] || { say "$name never sent its key (docker logs cabify-fleet-$name)" >&2; exit 1; }
      sleep 0.5
    done
  done
  answering
  # The formulas call this project's modules while they render: a new minion has them
  # before its first state run.
  salt_cmd -L "${HOSTS// /,}" saltutil.sync_all >/dev/null 2>&1
  say "hosts up: $HOSTS"
}

CONTROLLER_CONF=$SALT_CONFIG_DIR/master.d/cabify-fleet.conf
controller() {  # the master's release controller drives the fleet: its Consul servers and hosts
  mkdir -p "$(dirname "$CONTROLLER_CONF")"
  {
    echo "# Written by scripts/fleet.sh up, removed by down: the release controller drives the fleet."
    echo "cabify_controller:"
    echo "  consul:"
    echo "    hosts: $(fleet "[h['address'] for n, h in sorted(f['hosts'].items()) if 'consul-server' in h['roles']]")"
    echo "  app_target: L@$(fleet "','.join(n for n, h in sorted(f['hosts'].items()) if 'app' in h['roles'])")"
    echo "  lb_target: L@$(fleet "','.join(n for n, h in sorted(f['hosts'].items()) if 'lb' in h['roles'])")"
    echo "  release_requesters: $(fleet "[n for n, h in sorted(f['hosts'].items()) if 'app' in h['roles']]")"
  } >"$CONTROLLER_CONF"
}

down() {
  local name
  for name in $HOSTS; do
    docker rm -f "cabify-fleet-$name" >/dev/null 2>&1 || true
    docker volume rm "cabify-fleet-$name-docker" >/dev/null 2>&1 || true
    salt_key -y -d "$name" >/dev/null 2>&1 || true
  done
  docker network rm "$NETWORK" >/dev/null 2>&1 || true
  rm -f "$CONTROLLER_CONF"
  say "removed"
}

case "${1:-}" in
  up) image; network; for name in $HOSTS; do host "$name"; done; accept; controller ;;
  down) down ;;
  answering) answering ;;
  *) echo "usage: $0 up|down|answering" >&2; exit 2 ;;
esac
