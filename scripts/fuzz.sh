#!/usr/bin/env bash
# Runs the proptest fuzz targets of tests/core_fuzz.rs (and the regression cases beside them) with many cases:
#
#   FUZZ_CASES    cases per target (default 20000; the test suite's default is 2000)
#   FUZZ_TIMEOUT  wall-clock bound in seconds for the run, not counting the build (default 300)
#
# Prints how many cases each target ran. Exits non-zero if any target or regression case fails, or if the run
# exceeds the bound. A failing target prints proptest's minimal failing input: record it as a regression #[test]
# in tests/core_fuzz.rs.
set -euo pipefail
cd "$(dirname "$0")/.."

export FUZZ_CASES="${FUZZ_CASES:-20000}"
bound="${FUZZ_TIMEOUT:-300}"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT

echo "fuzz: building tests/core_fuzz.rs"
cargo test --test core_fuzz --no-run --quiet

echo "fuzz: ${FUZZ_CASES} cases per target, at most ${bound}s"
started=$SECONDS
status=0
timeout --kill-after=10 "$bound" cargo test --quiet --test core_fuzz -- --nocapture >"$log" 2>&1 || status=$?
elapsed=$((SECONDS - started))

# One line per target, from the count each target prints when it ends (pass or fail).
grep -o 'fuzz target [A-Za-z_]*: [0-9]* cases run.*' "$log" | sed 's/^/fuzz: /' || true
grep -o 'plugin replies by endpoint and status: .*' "$log" | sed 's/^/fuzz: /' || true
grep -E '^test .* \.\.\. |^test result:' "$log" | grep -v '^test .* \.\.\. ok$' | grep -v '^test result: ok' || true

if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
    tail -n 40 "$log"
    echo "fuzz: FAILED: the run exceeded its ${bound}s bound (FUZZ_CASES=${FUZZ_CASES}); lower FUZZ_CASES or raise FUZZ_TIMEOUT" >&2
    exit 1
fi
if [ "$status" -ne 0 ]; then
    # The failures section: each failing target's message and minimal failing input.
    sed -n '/^failures:$/,$p' "$log" | head -n 300
    grep -B2 -A12 'minimal failing input' "$log" | cut -c1-2000 | head -n 200 || true
    echo "fuzz: FAILED after ${elapsed}s (exit ${status})" >&2
    exit "$status"
fi
grep '^test result:' "$log" | sed 's/^/fuzz: /'
echo "fuzz: all targets passed in ${elapsed}s"
