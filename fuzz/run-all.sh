#!/usr/bin/env bash
# Runs every target for SECONDS (default 90) each, seeded from fuzz/seeds/,
# and prints libFuzzer's closing stats. Needs a nightly toolchain and
# cargo-fuzz (`cargo install cargo-fuzz`).
set -euo pipefail
cd "$(dirname "$0")"
SECONDS_EACH=${1:-90}
for target in $(cargo +nightly fuzz list); do
    mkdir -p "corpus/$target"
    seeds="seeds/$target"
    [ -d "$seeds" ] || seeds=""
    echo "==> $target for ${SECONDS_EACH}s"
    cargo +nightly fuzz run "$target" "corpus/$target" $seeds -- \
        -max_total_time="$SECONDS_EACH" -print_final_stats=1 2>&1 |
        grep -E "^(stat::number_of_executed_units|stat::average_exec_per_sec|stat::new_units_added|Done|==[0-9]+==|SUMMARY|artifact_prefix|Test unit written)" || true
done
