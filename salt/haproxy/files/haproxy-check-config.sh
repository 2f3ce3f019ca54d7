#!/bin/sh
# Managed by Salt (haproxy formula).
# haproxy-check-config FILE: `haproxy -c -f FILE`, and for each line HAProxy rejects,
# the pillar key that wrote it (lines from pillar end in "# pillar: KEY").
file=${1:?usage: haproxy-check-config FILE}
out=$(haproxy -c -f "$file" 2>&1) && exit 0
echo "$out"
echo "$out" | sed -n 's/.*\[[^]]*:\([0-9][0-9]*\)\].*/\1/p' | sort -un | while read -r n; do
  line=$(sed -n "${n}p" "$file")
  key=$(printf '%s\n' "$line" | sed -n 's/.*# pillar: *\([^ ]*\).*/\1/p')
  if [ -n "$key" ]; then
    echo "haproxy -c rejects line $n, from pillar key $key: $(printf '%s\n' "$line" | sed 's/ *# pillar:.*//; s/^ *//')"
  fi
done
exit 1
