#!/bin/sh
# Fills an image's virtualenv (venv/, in the Dockerfile's build stages, WORKDIR /opt/ems) from the
# wheelhouse alone:
#
#   sh image-venv.sh PACKAGES [PIP_OPTION...]
#
# PACKAGES is an alternation of distribution names as requirements.txt spells them
# ("pymodbus|paho-mqtt|..."); their exact pins are taken from requirements.txt (every name must be
# pinned there) and installed with the PIP_OPTIONs (the north-bound stage: --no-deps), then the
# project's own wheel without dependencies. pip and setuptools leave the virtualenv, and so do the
# distributions' own test suites: nothing imports them at run time.
set -eu
packages=$1
shift
grep -E "^(${packages})==" requirements.txt > runtime-requirements.txt || true
wanted=$(printf '%s\n' "$packages" | tr '|' '\n' | sort -u | wc -l)
found=$(wc -l < runtime-requirements.txt)
if [ "$wanted" -ne "$found" ]; then
    echo "image-venv.sh: requirements.txt pins $found of the $wanted distributions in '$packages'" >&2
    exit 1
fi
venv/bin/pip install "$@" -r runtime-requirements.txt
venv/bin/pip install --no-deps ems-platform
venv/bin/pip uninstall -y pip setuptools
find venv/lib -depth -type d -name tests -path '*/site-packages/*' -exec rm -rf {} +
