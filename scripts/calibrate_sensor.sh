#!/usr/bin/env bash
# The field manual's calibration command: set a sensor's offset (and optionally gain).
#
#   scripts/calibrate_sensor.sh --id SENSOR_01 --offset 0.05 [--gain 1.02]   # as the manual writes it
#   scripts/calibrate_sensor.sh SENSOR_01 0.05 [1.02]                        # the short positional form
#
# A thin wrapper over `ems-edge calibrate --id ID --offset OFFSET [--gain GAIN]`, which
# edits the sensor config atomically (write, fsync, rename); the running agent picks the
# change up without a restart. The config path comes from --config PATH, else
# $EMS_SENSORS_CONF, else /etc/ems/sensors.conf. In the option form every argument goes to
# `ems-edge calibrate` unchanged (it reports a missing or bad value); in the positional form
# arguments after GAIN are passed through (e.g. --config PATH).
set -euo pipefail

usage() {
    echo "usage: $0 --id SENSOR_ID --offset OFFSET [--gain GAIN] [--config PATH]" >&2
    echo "       $0 SENSOR_ID OFFSET [GAIN] [--config PATH]" >&2
    exit 2
}

if [[ $# -eq 0 || "$1" == -h || "$1" == --help ]]; then
    usage
fi
if [[ "$1" == -* ]]; then
    args=(calibrate "$@")
else
    [[ $# -ge 2 ]] || usage
    args=(calibrate --id "$1" --offset "$2")
    shift 2
    if [[ $# -gt 0 && "$1" != -* ]]; then
        args+=(--gain "$1")
        shift
    fi
    args+=("$@")
fi

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if command -v ems-edge >/dev/null 2>&1; then
    exec ems-edge "${args[@]}"
elif [[ -x "$here/../.venv/bin/ems-edge" ]]; then
    exec "$here/../.venv/bin/ems-edge" "${args[@]}"
else
    exec python3 -m edge_agent.cli "${args[@]}"
fi
