#!/usr/bin/env bash
# Field-manual command kept working: set a sensor's calibration offset (and optionally gain).
#
#   scripts/calibrate_sensor.sh SENSOR_01 0.05          # offset only
#   scripts/calibrate_sensor.sh SENSOR_01 0.05 1.02     # offset and gain
#
# A thin wrapper over `ems-edge calibrate --id ID --offset OFFSET [--gain GAIN]`, which
# edits the sensor config atomically (write, fsync, rename); the running agent picks the
# change up without a restart. The config path comes from $EMS_SENSORS_CONF
# (default /etc/ems/sensors.conf); extra arguments after GAIN are passed through
# (e.g. --config PATH).
set -euo pipefail

if [[ $# -lt 2 || "$1" == -h || "$1" == --help ]]; then
    echo "usage: $0 SENSOR_ID OFFSET [GAIN] [ems-edge calibrate options...]" >&2
    exit 2
fi
sensor_id=$1
offset=$2
shift 2
args=(calibrate --id "$sensor_id" --offset "$offset")
if [[ $# -gt 0 && "$1" != -* ]]; then
    args+=(--gain "$1")
    shift
fi

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if command -v ems-edge >/dev/null 2>&1; then
    exec ems-edge "${args[@]}" "$@"
elif [[ -x "$here/../.venv/bin/ems-edge" ]]; then
    exec "$here/../.venv/bin/ems-edge" "${args[@]}" "$@"
else
    exec python3 -m edge_agent.cli "${args[@]}" "$@"
fi
