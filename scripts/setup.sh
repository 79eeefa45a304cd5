#!/usr/bin/env bash
# Sets up Baponi on a Debian host: the system packages it runs on, then a virtualenv (.venv)
# holding the project and its test tools. Safe to run again; it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "setup.sh: run as root (sandboxes need namespaces, cgroups and id maps)" >&2
  exit 1
fi

# python3, node and bash are the sandbox interpreters of the built-in image; libseccomp2 is
# loaded by the seccomp layer; gcc and libc6-dev build the sandbox launcher (launcher.c) on
# the agent's first start; python3-venv builds the project's environment.
packages=(python3 python3-venv nodejs bash coreutils libseccomp2 iproute2 gcc libc6-dev)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup.sh: installing ${missing[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e ".[test]"
echo "setup.sh: ready (.venv)"
