#!/usr/bin/env bash
# `make demo`: the main job on the embedded default, after `make setup`.
#   1. the offline preview of the `local` stack (Pulumi mock runtime, no CLI, no cluster),
#      rendering every Kubernetes manifest to out/local/;
#   2. the offline policy gate: the ems-guard pack over the Analyzer gRPC protocol, every stack;
#   3. the telemetry pipeline for real on 127.0.0.1: Modbus simulator → edge agent →
#      Mosquitto (mTLS, the platform's generated roles) → ingest → Prometheus → PromQL, with
#      lost/duplicated counts, ending with the address of the operator page (DEMO_HOLD=600 make demo
#      keeps it up for 10 minutes); and the north-bound step beside it: a 2030.5 test server's export
#      limit → ems-northbound → the site's register (read back) → the Responses posted back; and one
#      alert on purpose: the simulator's E04 on tx1's relay → EmsPlcFault in Alertmanager and on the
#      operator page, then cleared and resolved (left firing while DEMO_HOLD keeps the demo up).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=.venv/bin
seconds=${DEMO_SECONDS:-12}

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1/3 Offline preview of the embedded 'local' stack (manifests → out/local)"
"$bin/emsctl" preview --stack local --render out/local

step "2/3 Policy gate: ems-guard on every stack, as 'pulumi preview --policy-pack' would run it"
"$bin/emsctl" policy --all-stacks

step "3/3 Telemetry: simulator → edge agent → Mosquitto (mTLS) → ingest → Prometheus → PromQL (${seconds}s); north-bound: 2030.5 export limit → ems-northbound → site register → Responses; alert: E04 → EmsPlcFault"
"$bin/python" -m devenv.demo_pipeline --seconds "$seconds" --hold "${DEMO_HOLD:-0}"
