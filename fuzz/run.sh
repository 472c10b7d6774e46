#!/usr/bin/env bash
# Runs every cargo-fuzz (libFuzzer) target for a bounded time each. Not part of
# `cargo test`: needs the nightly toolchain and cargo-fuzz
# (`rustup toolchain install nightly; cargo install cargo-fuzz`).
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 60 s, all targets)
#
# Seeds come from the repo's test domains (and ../shared/fixtures/domains when
# present), the shipped policy and the kept regression inputs. A crash stops the run
# with a non-zero exit; its input is in fuzz/artifacts/TARGET/. Keep it as a
# regression test: copy it to tests/data/fuzz/TARGET/ (tests/fuzz_regressions.rs
# runs every file there through the same checks on every `cargo test`).
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(domain rewrite policy status)

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz/run.sh: needs nightly + cargo-fuzz: rustup toolchain install nightly && cargo install cargo-fuzz" >&2
    exit 2
fi

# Seed corpora (libFuzzer adds what it finds next to them; fuzz/corpus is ignored by git).
mkdir -p corpus/domain corpus/rewrite corpus/policy corpus/status
for f in ../tests/data/domains/*.xml ../../shared/fixtures/domains/*.xml; do
    [ -f "$f" ] || continue
    b=$(basename "$f")
    cp "$f" "corpus/domain/$b"
    # rewrite's first byte picks the fixture host.
    { printf '\000'; cat "$f"; } >"corpus/rewrite/$b"
    { printf '<domstatus state="running" pid="1"><vcpus><vcpu id="0" pid="2"/></vcpus>'; cat "$f"; printf '</domstatus>'; } \
        | grep -v '^<?xml' >"corpus/status/$b" || true
done
cp ../config/policy.yaml corpus/policy/shipped.yaml
for f in ../tests/data/fuzz/*/*; do
    [ -f "$f" ] || continue
    t=$(basename "$(dirname "$f")")
    [ -d "corpus/$t" ] && cp "$f" "corpus/$t/regression-$(basename "$f")"
done

status=0
for t in "${targets[@]}"; do
    echo "=== fuzz $t for ${secs}s"
    # -rss_limit_mb: the hook's inputs are bounded (16 MiB XML); 2 GiB means a leak.
    if ! cargo +nightly fuzz run "$t" "corpus/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -max_len=65536 -print_final_stats=1; then
        echo "=== $t: FAILED; crashing input in fuzz/artifacts/$t/" >&2
        status=1
    fi
done
exit $status
