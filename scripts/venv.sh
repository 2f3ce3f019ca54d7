#!/usr/bin/env bash
# Create (or bring up to date) the Salt virtualenv from the lock file, and put the
# salt entry points on PATH through /usr/local/bin so that an operator types plain
# `salt-call`, `salt`, `salt-run`, `salt-key`.
set -euo pipefail
lock=${1:?usage: venv.sh requirements.lock}
VENV=${VENV:?} PYTHON=${PYTHON:-python3}

if ! "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null; then
  echo "venv: $PYTHON lacks venv/ensurepip; installing python3-venv" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check -r "$lock"
"$VENV/bin/python" -c 'import salt.version, docker, consul; print("venv: salt", salt.version.__version__)'

for tool in salt salt-call salt-run salt-key salt-master salt-minion ruff; do
  ln -sfn "$VENV/bin/$tool" "/usr/local/bin/$tool"
done
