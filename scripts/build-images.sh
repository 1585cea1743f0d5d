#!/usr/bin/env bash
# Builds the project's container images (Dockerfile targets edge-agent, ingest, northbound) with
# buildah, and optionally pushes them and writes their digests.
#
#   scripts/build-images.sh [--local-base] [--wheels-from venv|index] [--push] [--digests FILE] [TARGET…]
#
#   --local-base      build the Debian bookworm base from Debian packages (mmdebstrap, minbase variant:
#                     what debian:bookworm-slim is made of) and build FROM it, for machines that cannot
#                     pull the Dockerfile's pinned base. Default: the Dockerfile's BASE (pinned by digest).
#   --wheels-from     where build/wheels comes from: `venv` rebuilds the wheels from .venv (offline,
#                     tests/wheelhouse.py), `index` downloads the requirements.txt pins (CI). Default venv.
#   --push            push each image (REGISTRY, default ghcr.io/ems-platform; log in first) and write
#                     `target image@digest` lines to --digests (default build/digests.txt).
#   --push-only       push the images built before, without building (the bytes that were scanned).
#
# Environment: REGISTRY, VERSION (default: pyproject.toml's), REVISION (default: git HEAD),
# OCI_RUNTIME (default: runc when installed: crun refuses cgroup v1 hybrid hosts).
# Images are tagged $REGISTRY/<target>:$VERSION. `make images` runs this with --local-base and then
# the image tests (tests/test_images.py, EMS_IMAGE_TESTS=1).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
python=${PYTHON:-$root/.venv/bin/python}
registry=${REGISTRY:-ghcr.io/ems-platform}
version=${VERSION:-$("$python" -c 'import tomllib; print(tomllib.load(open("pyproject.toml","rb"))["project"]["version"])')}
revision=${REVISION:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
local_base=0 wheels_from=venv push=0 build=1 digests=build/digests.txt targets=()
while (($#)); do
    case $1 in
        --local-base) local_base=1 ;;
        --wheels-from) wheels_from=$2; shift ;;
        --push) push=1 ;;
        --push-only) push=1 build=0 ;;
        --digests) digests=$2; shift ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        -*) echo "error: unknown option $1" >&2; exit 2 ;;
        *) targets+=("$1") ;;
    esac
    shift
done
((${#targets[@]})) || targets=(edge-agent ingest northbound)
for t in "${targets[@]}"; do
    case $t in edge-agent|ingest|northbound) ;; *) echo "error: unknown target '$t' (edge-agent, ingest, northbound)" >&2; exit 2 ;; esac
done

runtime=${OCI_RUNTIME:-}
if [[ -z $runtime ]] && command -v runc >/dev/null 2>&1; then runtime=runc; fi
# Explicit limits for the build's RUN steps: by default rootful buildah asks for the host's maximum,
# which a sandboxed container host refuses (setrlimit RLIMIT_NOFILE/NPROC: Operation not permitted;
# here NPROC above a few thousand is refused even for root).
build_flags=(--layers --network host --ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)" --ulimit nproc=4096:4096)
[[ -n $runtime ]] && build_flags+=(--runtime "$runtime")

if ((build)); then
    # The wheelhouse the builder stage installs from (the build reaches no Python package index).
    rm -rf build/wheels && mkdir -p build/wheels
    case $wheels_from in
        venv)
            "$python" - <<'PY'
import sys, tomllib
sys.path.insert(0, "tests")
from pathlib import Path
from wheelhouse import build_wheelhouse
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
print(f"wheelhouse: {len(build_wheelhouse(deps, Path('build/wheels')))} wheels rebuilt from the virtualenv")
PY
            "$python" -m pip wheel -q --no-deps --no-build-isolation --no-index -w build/wheels . ;;
        index)
            mapfile -t deps < <("$python" -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml","rb"))["project"]["dependencies"]))')
            "$python" -m pip download -q --only-binary=:all: -c requirements.txt -d build/wheels "${deps[@]}"
            "$python" -m pip wheel -q --no-deps -w build/wheels . ;;
        *) echo "error: --wheels-from must be venv or index, not '$wheels_from'" >&2; exit 2 ;;
    esac

    base_args=()
    if ((local_base)); then
        # The path filters of debian:bookworm-slim: no manuals, translations or docs but the copyright
        # files (they stay in the rootfs' dpkg config, so later apt installs follow them). The merged-usr
        # hook installs usr-is-merged, as the official image has: without it apt satisfies
        # init-system-helpers' `usrmerge | usr-is-merged` with usrmerge, which pulls in perl (50 MB).
        recipe=(--variant=minbase --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
                --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*'
                --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright'
                --dpkgopt='path-exclude=/usr/share/info/*' bookworm)
        # Tagged by the recipe, so a changed recipe builds a new base instead of reusing the old one.
        base=localhost/ems-debian-base:bookworm-$(printf '%s\n' "${recipe[@]}" | sha256sum | cut -c1-12)
        if ! buildah inspect --type image "$base" >/dev/null 2>&1; then
            echo "building $base from Debian packages (mmdebstrap ${recipe[*]})"
            tar=$(mktemp --suffix=.tar)
            mmdebstrap --quiet "${recipe[@]}" "$tar"
            podman import --quiet "$tar" "$base" >/dev/null
            rm -f "$tar"
        fi
        base_args=(--build-arg "BASE=$base")
    fi
fi

created=$(date -u +%Y-%m-%dT%H:%M:%SZ)
((push)) && : > "$digests"
for target in "${targets[@]}"; do
    image="$registry/$target:$version"
    echo "== $image"
    if ((build)); then
        buildah build "${build_flags[@]}" "${base_args[@]}" --target "$target" \
            --build-arg "VERSION=$version" --build-arg "REVISION=$revision" --build-arg "CREATED=$created" \
            --tag "$image" .
    fi
    if ((push)); then
        digest_file=$(mktemp)
        buildah push --digestfile "$digest_file" "$image" "docker://$image"
        printf '%s %s@%s\n' "$target" "$image" "$(cat "$digest_file")" >> "$digests"
        rm -f "$digest_file"
    fi
done
((push)) && cat "$digests"
((build)) && echo "built: ${targets[*]}"
exit 0
