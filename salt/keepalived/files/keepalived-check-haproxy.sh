#!/bin/sh
# Managed by Salt (keepalived formula): keepalived's track_script. Exits 0 while
# HAProxy runs: every process in its pid file is alive. A HAProxy stopped or dead
# fails it, and this LB gives the virtual address away.
pidfile=${1:-{{ check.pidfile }}}
[ -s "$pidfile" ] || exit 1
for pid in $(cat "$pidfile"); do
  kill -0 "$pid" 2>/dev/null || exit 1
done
exit 0
