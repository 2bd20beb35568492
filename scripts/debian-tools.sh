#!/usr/bin/env bash
# Installs Debian packages that provide the given commands, when a command is missing.
# Idempotent: once installed, it only checks.
#
#   scripts/debian-tools.sh COMMAND=PACKAGE ...
#   scripts/debian-tools.sh promtool=prometheus stunnel4=stunnel4
set -euo pipefail

need=()
for pair in "$@"; do
  command -v "${pair%%=*}" >/dev/null || need+=("${pair#*=}")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]} from Debian (once per machine)" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi
