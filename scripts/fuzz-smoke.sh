#!/usr/bin/env bash
# Short run of every fuzz target (issue 6): builds fuzz/ with cargo-fuzz and runs each target
# for FUZZ_SECONDS (default 20) from its checked-in seeds, with the SMTP dictionary.
# Fails on any crash or broken invariant; the failing input is left in fuzz/artifacts/<target>/.
#
# cargo-fuzz needs nightly flags (-Zsanitizer); on the stable toolchain RUSTC_BOOTSTRAP=1
# unlocks them. Install once with `cargo install cargo-fuzz`.
#
#   scripts/fuzz-smoke.sh                 # every target, 20 s each
#   FUZZ_SECONDS=600 scripts/fuzz-smoke.sh session   # one target, 10 minutes
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
export RUSTC_BOOTSTRAP=1
seconds=${FUZZ_SECONDS:-20}
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(session reply address envelope pop3)

if ! cargo fuzz --version >/dev/null 2>&1; then
    if [ -n "${CI:-}" ]; then
        cargo install cargo-fuzz --locked
    else
        echo "fuzz-smoke: cargo-fuzz not installed (cargo install cargo-fuzz); skipped" >&2
        exit 0
    fi
fi

if ! out=$(cargo fuzz build -O 2>&1); then
    echo "$out" | tail -n 30 >&2
    echo "fuzz-smoke: build failed" >&2
    exit 1
fi
bin=target/x86_64-unknown-linux-gnu/release
for t in "${targets[@]}"; do
    work=$(mktemp -d)
    mkdir -p "artifacts/$t"
    log="$work/log"
    if ! "$bin/$t" "$work" "seeds/$t" -dict=smtp.dict -max_total_time="$seconds" \
            -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
            -artifact_prefix="artifacts/$t/" >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        echo "fuzz-smoke: target $t FAILED (input in fuzz/artifacts/$t/)" >&2
        rm -rf "$work"
        exit 1
    fi
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
    echo "fuzz-smoke: $t ok, $runs executions in ${seconds}s"
    rm -rf "$work"
done
