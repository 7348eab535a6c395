#!/usr/bin/env bash
# Installs the Python tools of deploy/requirements.txt into target/deploy-venv
# (tests/api/deploy.rs runs target/deploy-venv/bin/kubernetes-validate).
# Idempotent and quick once done: reinstalls only when the requirements change.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/deploy-venv
stamp="$venv/.requirements"
if [ -f "$stamp" ] && cmp -s deploy/requirements.txt "$stamp"; then
  exit 0
fi
rm -rf "$venv"
mkdir -p target
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r deploy/requirements.txt
cp deploy/requirements.txt "$stamp"
echo "installed deploy/requirements.txt into $venv"
