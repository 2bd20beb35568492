#!/usr/bin/env bash
# Installs Debian packages that provide the given commands (or Perl modules), when one is
# missing. Idempotent: once installed, it only checks.
#
#   scripts/debian-tools.sh COMMAND=PACKAGE ... | perl:MODULE=PACKAGE ...
#   scripts/debian-tools.sh promtool=prometheus stunnel4=stunnel4 perl:IPC::Cmd=perl
set -euo pipefail

need=()
for pair in "$@"; do
  check="${pair%%=*}"
  case "$check" in
    perl:*) perl -M"${check#perl:}" -e1 2>/dev/null || need+=("${pair#*=}") ;;
    *) command -v "$check" >/dev/null || need+=("${pair#*=}") ;;
  esac
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]} from Debian (once per machine)" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi
