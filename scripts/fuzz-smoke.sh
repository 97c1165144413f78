#!/usr/bin/env bash
# Fuzz smoke test: builds fuzz/ once, then runs every cargo-fuzz target for a few
# seconds, one at a time, seeded from fuzz/corpus/<target>. Fails if any target
# crashes (a panic is a crash: each target asserts its model). The long runs and how
# to reproduce a crash are in FUZZING.md.
#
#   FUZZ_SMOKE_SECONDS  seconds per target (default 5)
#   FUZZ_SMOKE_RUNS     executions per target at most (default 500000)
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SMOKE_SECONDS:-5}"
runs="${FUZZ_SMOKE_RUNS:-500000}"

# cargo-fuzz needs nightly-only flags (-Zsanitizer=address); this machine has one
# stable toolchain, which accepts them with RUSTC_BOOTSTRAP=1.
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

cd fuzz
# -a: debug assertions and overflow checks, as in the long runs.
cargo fuzz build -a

# New inputs go to a scratch corpus (listed first); the committed seeds stay as they are.
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

passed=0
failed=()
for target in $(cargo fuzz list); do
    mkdir -p "$scratch/$target"
    echo "fuzz-smoke: $target (${seconds}s, at most $runs runs)"
    if cargo fuzz run -a "$target" "$scratch/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -runs="$runs" -timeout=10 \
        >"$scratch/$target.log" 2>&1; then
        grep -E '^Done [0-9]+ runs' "$scratch/$target.log" || true
        passed=$((passed + 1))
    else
        log="$scratch/$target.log"
        if grep -qE 'panicked at|ERROR: (libFuzzer|AddressSanitizer)' "$log"; then
            # The failed assertion (both sides) and how to reproduce it.
            grep -E -A6 'panicked at|ERROR: (libFuzzer|AddressSanitizer)' "$log" | head -n 30
            sed -n '/^Failing input:/,/^Reproduce with:/p;/cargo fuzz run/p' "$log"
        else
            tail -n 40 "$log"
        fi
        echo "fuzz-smoke: $target FAILED; the input is in fuzz/artifacts/$target/"
        failed+=("$target")
    fi
done

echo "fuzz: $passed passed, ${#failed[@]} failed"
if [ "${#failed[@]}" -ne 0 ]; then
    echo "failed targets: ${failed[*]}"
    exit 1
fi
