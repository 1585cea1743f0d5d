#!/usr/bin/env bash
# Installs the Debian packages the demo, tests and benchmarks run for real:
# Mosquitto (MQTT broker, also mosquitto_pub/sub), Prometheus (the TSDB, also promtool), nginx (the
# API gateway on 443; nginx-core carries the auth_request module its token checks use),
# Alertmanager (prometheus-alertmanager), Chromium (the operator page's headless browser test), busybox
# (the config-reloader sidecar's shell), and
# what the edge install kit needs (dpkg-dev, python3.11-venv, logrotate, systemd).
# With --bench (make bench), also Node.js and npm (Node-RED, bench/nodered).
# With --images (make images), also what builds and runs the container images: buildah, podman,
# runc (crun refuses cgroup v1 hybrid hosts), mmdebstrap (the Debian base from Debian packages).
# Idempotent: does nothing when every binary is already there.
set -euo pipefail

need=()
for option in "$@"; do
  case "$option" in
    --images)
      for tool in buildah podman runc mmdebstrap; do
        command -v "$tool" >/dev/null 2>&1 || need+=("$tool")
      done ;;
    --bench)
      command -v node >/dev/null 2>&1 || need+=(nodejs)
      command -v npm >/dev/null 2>&1 || need+=(npm) ;;
    *)
      echo "install-system-packages: unknown option $option (known: --images, --bench)" >&2
      exit 2 ;;
  esac
done
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v mosquitto_sub >/dev/null 2>&1 || need+=(mosquitto-clients)
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v prometheus-alertmanager >/dev/null 2>&1 || need+=(prometheus-alertmanager)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# The edge install kit (make deb, its tests): dpkg-deb, Debian's python3.11 venv, logrotate, systemd-analyze.
command -v dpkg-deb >/dev/null 2>&1 || need+=(dpkg-dev)
[ -x /usr/bin/python3.11 ] && /usr/bin/python3.11 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3.11-venv)
command -v logrotate >/dev/null 2>&1 || [ -x /usr/sbin/logrotate ] || need+=(logrotate)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
# What the .deb's test installs it with (its Depends: adduser, procps) and in (mount: its private root).
command -v adduser >/dev/null 2>&1 || [ -x /usr/sbin/adduser ] || need+=(adduser)
command -v pkill >/dev/null 2>&1 || need+=(procps)
command -v mount >/dev/null 2>&1 || need+=(mount)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-core)
# The config-reloader sidecar's script runs under busybox sh in the Prometheus and Alertmanager images.
command -v busybox >/dev/null 2>&1 || need+=(busybox)
[ ${#need[@]} -eq 0 ] && exit 0

echo "installing Debian packages: ${need[*]}"
if [ "$(id -u)" -eq 0 ]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1; then
  sudo=(sudo)
else
  echo "error: need root or sudo to install ${need[*]} (apt-get install -y ${need[*]})" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}"
