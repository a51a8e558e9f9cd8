#!/usr/bin/env bash
# Install what the project needs. `bash setup.sh` for the dashboard; `bash setup.sh --test`
# also installs Debian's chromium for the browser tests and static figure export.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
$PY -m pip install -q torch==2.14.1 torchvision==0.29.1
$PY -m pip install -q -r requirements.txt
if [ "${1:-}" = "--test" ] && ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null
  else
    sudo apt-get update -qq && sudo apt-get install -y -qq chromium >/dev/null
  fi
fi
