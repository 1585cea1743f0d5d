#!/usr/bin/env bash
# Runs CI's entry point (.ci/run → make test) on a machine that has never seen this project: a clean
# Debian 12 (bookworm) root file system made from Debian packages with mmdebstrap, run as root in a
# throw-away podman container on the host's network. It catches an install step that a machine which
# already has the packages hides (a green CI run on a used machine proves nothing about a new one).
#
#   scripts/fresh-machine-check.sh [REV] [-- COMMAND…]    # `make fresh-machine` runs it; needs root
#
# REV (default HEAD; a branch or tag) is what is cloned: its commits only, as CI clones them;
# uncommitted changes are not seen. COMMAND (default `CI=true bash .ci/run`) runs in the clone, e.g.
# `-- make setup` while iterating. The log is kept in out/fresh-machine/run.log.
#
# The machine starts with what any machine that runs .ci/run has, no more: git, make, Debian's
# python3 (without venv or pip), ca-certificates and the host's local CAs (/usr/local/share/
# ca-certificates, which the registries' TLS may be signed with). From the host's environment only
# the CA-bundle variables pass in; the host's pip and npm configuration (pip.conf, PIP_FIND_LINKS,
# local wheel folders and indexes, constraints) stays out, so pip installs from its default index as
# on a new machine. The base image is tagged by a hash of its recipe and built once (about a minute);
# every run starts a new container from it and removes it afterwards.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
rev=HEAD
command=(bash -c 'CI=true bash .ci/run')
while (($#)); do
    case $1 in
        --) shift; command=("$@"); break ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        -*) echo "error: unknown option $1" >&2; exit 2 ;;
        *) rev=$1 ;;
    esac
    shift
done
[[ $(id -u) -eq 0 ]] || { echo "error: run as root (podman --privileged, mmdebstrap)" >&2; exit 1; }
for tool in mmdebstrap podman; do
    command -v "$tool" >/dev/null || { echo "error: $tool is missing: scripts/install-system-packages.sh --images" >&2; exit 1; }
done
commit=$(git rev-parse --verify "$rev^{commit}")

recipe=(--variant=minbase --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
        '--include=ca-certificates,git,make,python3'
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*'
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright'
        bookworm)
local_cas=$(cat /usr/local/share/ca-certificates/*.crt 2>/dev/null | sha256sum | cut -c1-12)
image=localhost/ems-fresh-machine:bookworm-$(printf '%s\n' "${recipe[@]}" "$local_cas" | sha256sum | cut -c1-12)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if ! podman image exists "$image"; then
    echo "building $image (mmdebstrap ${recipe[*]})" >&2
    cas=()
    if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
        # shellcheck disable=SC2016  # "$1" is the root that mmdebstrap passes to its hook
        cas=(--customize-hook='copy-in /usr/local/share/ca-certificates /usr/local/share'
             --customize-hook='chroot "$1" update-ca-certificates --fresh >/dev/null')
    fi
    mmdebstrap --quiet "${cas[@]}" "${recipe[@]}" "$work/rootfs.tar" >&2
    podman import --quiet --change 'WORKDIR /root' "$work/rootfs.tar" "$image" >/dev/null
    rm -f "$work/rootfs.tar"
fi

# The clone's source: a bundle of REV, checked out as branch fresh-check (CI clones a branch).
git bundle create --quiet "$work/ems.bundle" "$rev"

trust=()
for var in PIP_CERT REQUESTS_CA_BUNDLE SSL_CERT_FILE SSL_CERT_DIR CURL_CA_BUNDLE NODE_EXTRA_CA_CERTS; do
    [[ -n ${!var:-} ]] && trust+=(-e "$var")
done
mkdir -p out/fresh-machine
log=out/fresh-machine/run.log
echo "fresh machine: $image, clone of ${commit:0:12}, running: ${command[*]}" | tee "$log"
start=$(date +%s)
# /tmp (pytest's temp root: spools, TSDBs, brokers' persistence) is a folder of the host's disk: the
# engine's overlay storage is mounted fsync=volatile, where fsync costs nothing, unlike a machine's
# disk (tests/edge_agent/test_fault.py catches the agent inside its WAL writes and fsyncs).
mkdir -m 1777 "$work/tmp"
# The container shares the host's network: it takes its test ports from the host's claims folder
# (devenv/ports.py), so a run here and one on the host at the same time never get the same port.
claims="${TMPDIR:-/tmp}/ems-port-claims-$(id -u)"
mkdir -m 0700 "$claims" 2>/dev/null || true
# --privileged: the suite mounts, unshares and installs a .deb as root, as it does on a real machine
# (and, with CAP_SYS_RESOURCE, nproc counts no other root processes of the host). runc and explicit
# rlimits: this host refuses crun and the engine's default rlimits (see tests/test_images.py LIMITS).
status=0
podman run --rm --runtime runc --privileged --network host --shm-size 1g \
    --ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)" --ulimit nproc=4096:4096 \
    -v "$work/ems.bundle:/src/ems.bundle:ro" -v "$work/tmp:/tmp" -v "$claims:/tmp/ems-port-claims-0" "${trust[@]}" "$image" \
    bash -c 'git clone -q --no-checkout /src/ems.bundle /root/ems-platform && cd /root/ems-platform \
             && git -c advice.detachedHead=false checkout -q -b fresh-check "$0" && exec "$@"' \
    "$commit" "${command[@]}" 2>&1 | tee -a "$log" || status=$?
echo "fresh machine: exit $status after $(( $(date +%s) - start )) s (log: $log)" | tee -a "$log"
exit "$status"
