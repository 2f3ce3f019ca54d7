#!/bin/sh
# Managed by Salt (consul formula).
# consul-check-config FILE: `consul validate` on the agent configuration rendered from
# the pillar key consul:config, saying so when it is rejected.
file=${1:?usage: consul-check-config FILE}
out=$(consul validate -quiet "$file" 2>&1) && exit 0
echo "consul validate rejects the agent configuration from pillar key consul:config:"
echo "$out"
exit 1
