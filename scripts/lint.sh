#!/usr/bin/env bash
# `make lint`: the repository's static checks, with the linters pinned in requirements-dev.txt.
#
#   - ruff       Python, the rules in pyproject.toml ([tool.ruff.lint])
#   - shellcheck every shell script: *.sh, and any file whose first line is a sh/bash shebang
#   - hadolint   every Dockerfile; scripts/check_dockerfile_add.py also rejects an unverified
#                 remote ADD (hadolint has no rule for it)
#   - actionlint every workflow in .github/workflows (shellcheck on the `run:` scripts too)
#   - zizmor     workflows and .github/dependabot.yml, offline audits
#   - bandit     the runtime packages and the policy pack, medium severity and up; every
#                 `# nosec` names its test and says why: `# nosec B310 # the URL is checked in …`
#
# Usage: scripts/lint.sh [DIR]   lint DIR (default: this repository); tests run it on copies.
#        LINT_ONLY="zizmor actionlint" scripts/lint.sh DIR   runs only the named checks.
# Every selected check runs; the script names the failed ones and exits 1 if there is one.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
root=$(cd "${1:-$here}" && pwd)
# The linters come from this checkout's virtualenv; actionlint finds shellcheck on PATH.
export PATH="${LINT_BIN:-$here/.venv/bin}:$PATH"
cd "$root"

bandit_targets=(edge_agent ingest ems_contract ems_runtime northbound emsctl devenv policies/ems-guard)
only=" ${LINT_ONLY:-ruff shellcheck hadolint actionlint zizmor bandit} "
failed=()

# Files are found on disk, not with git, so that a copy without .git is linted the same way.
list_files() {
    find . \( -name .git -o -name .venv -o -name node_modules -o -name __pycache__ -o -name .ruff_cache \
              -o -path ./out -o -path ./.demo -o -path ./.bench -o -path ./build -o -name '*.egg-info' \) -prune \
           -o -type f \( "$@" \) -print | sort
}

shell_files() {
    local file first
    while IFS= read -r file; do
        if [[ $file == *.sh ]]; then
            printf '%s\n' "$file"
            continue
        fi
        first=$(head -n 1 -- "$file" 2>/dev/null | tr -d '\0') || true
        if [[ $first =~ ^\#!.*(/|env[[:space:]]+)(ba|da|k)?sh([[:space:]]|$) ]]; then
            printf '%s\n' "$file"
        fi
    done < <(list_files -name '*')
}

run_ruff() {
    ruff check --no-cache .
}

run_shellcheck() {
    local files
    mapfile -t files < <(shell_files)
    ((${#files[@]})) || { echo "no shell scripts"; return 0; }
    shellcheck --severity=style "${files[@]}" && echo "${#files[@]} scripts clean"
}

run_hadolint() {
    local files
    mapfile -t files < <(list_files -name Dockerfile -o -name 'Dockerfile.*' -o -name '*.Dockerfile' -o -name Containerfile)
    ((${#files[@]})) || { echo "no Dockerfiles"; return 0; }
    local rc=0
    hadolint --failure-threshold style "${files[@]}" || rc=1
    python3 "$here/scripts/check_dockerfile_add.py" "${files[@]}" || rc=1
    ((rc == 0)) && echo "${#files[@]} Dockerfiles clean"
    return "$rc"
}

run_actionlint() {
    local files
    mapfile -t files < <(find .github/workflows -maxdepth 1 -type f \( -name '*.yml' -o -name '*.yaml' \) 2>/dev/null | sort)
    ((${#files[@]})) || { echo "no workflows"; return 0; }
    actionlint "${files[@]}" && echo "${#files[@]} workflows clean"
}

run_zizmor() {
    [[ -d .github ]] || { echo "no .github"; return 0; }
    zizmor --offline --no-progress --quiet .github
}

run_bandit() {
    local rc=0 bad
    bandit -q -r "${bandit_targets[@]}" --severity-level medium || rc=1
    # A bare `# nosec` silences every test on its line; each exception names its test and a reason.
    bad=$(grep -rnE --include='*.py' '#[[:space:]]*nosec' "${bandit_targets[@]}" \
          | grep -vE '#[[:space:]]*nosec B[0-9]{3}(,[[:space:]]*B[0-9]{3})*[[:space:]]+#[[:space:]]*[^[:space:]]' || true)
    if [[ -n $bad ]]; then
        echo "$bad"
        echo "a '# nosec' must name its tests and give a reason: '# nosec B310 # why it is safe'"
        rc=1
    fi
    ((rc == 0)) && echo "bandit: no medium or high finding in ${bandit_targets[*]}"
    return "$rc"
}

version_of() {
    case $1 in
        shellcheck) shellcheck --version | sed -n 's/^version: //p' ;;
        *) "$1" --version 2>&1 | head -n 1 ;;
    esac
}

for check in ruff shellcheck hadolint actionlint zizmor bandit; do
    [[ $only == *" $check "* ]] || continue
    printf '== %s (%s)\n' "$check" "$(version_of "$check")"
    "run_$check" || failed+=("$check")
done

if ((${#failed[@]})); then
    printf 'lint: FAILED: %s\n' "${failed[*]}" >&2
    exit 1
fi
echo "lint: all checks passed"
