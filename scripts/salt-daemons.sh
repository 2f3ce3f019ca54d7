#!/usr/bin/env bash
# Start the all-in-one salt-master and salt-minion from the virtualenv, with their
# configuration from conf/, and accept this minion's key by its id (never by
# auto_accept). Safe to run again: running daemons are reloaded only when their
# configuration changed. `salt-daemons.sh stop` stops both; `salt-daemons.sh running`
# succeeds when either runs.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
VENV=${VENV:-/opt/cabify-salt/venv}
MINION_ID=${MINION_ID:-$(hostname -f 2>/dev/null || hostname)}
export PATH="$VENV/bin:$PATH"

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
master_pid=/var/run/salt-master.pid
minion_pid=/var/run/salt-minion.pid

if [ "${1:-}" = running ]; then
  pid_alive "$minion_pid" || pid_alive "$master_pid"
  exit
fi
if [ "${1:-}" = stop ]; then
  for p in "$minion_pid" "$master_pid"; do
    pid_alive "$p" || continue
    kill "$(cat "$p")"
    deadline=$((SECONDS + 30))
    while pid_alive "$p" && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
    echo "salt-daemons: stopped $(basename "$p" .pid)"
  done
  exit 0
fi

render() {  # render TEMPLATE DEST; prints "changed" when DEST changed
  local tmp; tmp=$(mktemp)
  sed -e "s|@REPO@|$REPO|g" -e "s|@MINION_ID@|$MINION_ID|g" "$1" >"$tmp"
  if cmp -s "$tmp" "$2"; then rm -f "$tmp"; else
    mkdir -p "$(dirname "$2")"; mv "$tmp" "$2"; chmod 644 "$2"; echo changed; fi
}
master_changed=$(render "$REPO/conf/master.yaml" /etc/salt/master.d/cabify.conf)
# The release controller's view of a fleet (master.d/cabify-fleet.conf, written and
# removed by scripts/fleet.sh) is read by the master's reactor once it restarts.
fleet_conf=/etc/salt/master.d/cabify-fleet.conf fleet_seen=/run/cabify-fleet-conf.seen
if ! cmp -s <(cat "$fleet_conf" 2>/dev/null) <(cat "$fleet_seen" 2>/dev/null); then
  master_changed+=changed
  cat "$fleet_conf" 2>/dev/null >"$fleet_seen" || true
fi
minion_changed=$(render "$REPO/conf/minion.yaml" /etc/salt/minion.d/cabify.conf)
# Without systemd as PID 1 but with systemctl installed, Salt would pick its systemd
# service module in "offline" mode, where service states do nothing: use init.d.
if [ ! -d /run/systemd/system ]; then
  minion_changed+=$(render "$REPO/conf/minion-sysvinit.yaml" /etc/salt/minion.d/init-system.conf)
elif [ -f /etc/salt/minion.d/init-system.conf ]; then
  rm -f /etc/salt/minion.d/init-system.conf; minion_changed+=changed
fi

start() {  # start NAME PIDFILE CHANGED
  if pid_alive "$2" && [ -z "$3" ]; then return; fi
  if pid_alive "$2"; then
    echo "salt-daemons: configuration of $1 changed, restarting it"
    kill "$(cat "$2")"
    deadline=$((SECONDS + 30))
    while pid_alive "$2"; do
      [ $SECONDS -lt $deadline ] || { echo "salt-daemons: $1 did not stop" >&2; exit 1; }
      sleep 0.5
    done
  fi
  echo "salt-daemons: starting $1"
  "$VENV/bin/$1" -d
}
start salt-master "$master_pid" "$master_changed"
start salt-minion "$minion_pid" "$minion_changed"

# Accept this minion's key by name, once it has asked.
deadline=$((SECONDS + 60))
until salt-key -l accepted --out=json | grep -q "\"$MINION_ID\""; do
  if salt-key -l unaccepted --out=json | grep -q "\"$MINION_ID\""; then
    salt-key -y -a "$MINION_ID" >/dev/null && echo "salt-daemons: accepted key of $MINION_ID"
    continue
  fi
  [ $SECONDS -lt $deadline ] || { echo "salt-daemons: minion $MINION_ID never sent its key (see /var/log/salt/minion)" >&2; exit 1; }
  sleep 1
done

deadline=$((SECONDS + 60))
until salt --timeout=5 "$MINION_ID" test.ping --out=txt 2>/dev/null | grep -q True; do
  [ $SECONDS -lt $deadline ] || { echo "salt-daemons: minion $MINION_ID does not answer test.ping" >&2; exit 1; }
  sleep 1
done
echo "salt-daemons: master and minion $MINION_ID up"
