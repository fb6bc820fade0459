#!/usr/bin/env bash
# Runs the fuzz targets (tests/fuzz/fuzz_targets) with libFuzzer and AddressSanitizer on the
# stable toolchain (RUSTC_BOOTSTRAP: cargo-fuzz needs -Z flags), each from its committed seed
# corpus (tests/fuzz/corpus/TARGET, read only) plus a working corpus under target/fuzz.
#
#   tests/fuzz/run.sh [TARGET|all] [SECONDS]     (default: all, 60 s each)
#   FUZZ_SEED=N tests/fuzz/run.sh ...            the same mutations every run (CI)
#   tests/fuzz/run.sh minimise [TARGET|all]      drop committed seeds that add no coverage
#                                                 (libFuzzer -merge=1; names and regress-*
#                                                 reproducers are kept)
#
# Installs cargo-fuzz with cargo once. A crash, leak, timeout or out-of-memory fails the run;
# its reproducer is kept in target/fuzz/artifacts/TARGET/ (replay it with
# `RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir tests/fuzz TARGET FILE`). Prints, per target,
# the executions per second and the coverage (edges, features) it reached.
set -euo pipefail
cd "$(dirname "$0")/../.."
mode=run
if [ "${1:-}" = minimise ]; then
  mode=minimise
  shift
fi
which=${1:-all}
seconds=${2:-60}
export PATH="$HOME/.cargo/bin:$PATH"
export RUSTC_BOOTSTRAP=1
CARGO_FUZZ_VERSION=0.13.2

if ! cargo fuzz --version 2>/dev/null | grep " $CARGO_FUZZ_VERSION" >/dev/null; then
  echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION (cargo install, once)"
  cargo install --locked --quiet cargo-fuzz@"$CARGO_FUZZ_VERSION"
fi

targets=$(sed -n 's/^name = "\([a-z_]*\)"$/\1/p' tests/fuzz/Cargo.toml | grep -v '^orchestrator-fuzz$' || true)
if [ "$which" != all ]; then
  printf '%s\n' $targets | grep -x "$which" >/dev/null || { echo "fuzz: no target $which (targets: $(echo $targets))" >&2; exit 2; }
  targets=$which
fi

work=target/fuzz
mkdir -p "$work"
echo "fuzz: building $(echo $targets | wc -w) target(s) with AddressSanitizer"
cargo fuzz build --fuzz-dir tests/fuzz -O --debug-assertions $( [ "$which" = all ] || echo "$which" )

if [ $mode = minimise ]; then
  for t in $targets; do
    seeds=tests/fuzz/corpus/$t
    kept=$(mktemp -d)
    # -merge=1 copies into $kept only the inputs that add coverage, named by their SHA-1.
    cargo fuzz run --fuzz-dir tests/fuzz -O --debug-assertions "$t" "$kept" "$seeds" -- \
      -merge=1 -timeout=10 -rss_limit_mb=2048 >"$work/$t.merge.log" 2>&1
    before=$(ls "$seeds" | wc -l)
    for f in "$seeds"/*; do
      # Reproducers of fixed crashes stay: regression tests read them.
      case $(basename "$f") in regress-*) continue ;; esac
      [ -e "$kept/$(sha1sum "$f" | cut -d' ' -f1)" ] || rm -f "$f"
    done
    rm -rf "$kept"
    echo "fuzz: $t: kept $(ls "$seeds" | wc -l) of $before seeds"
  done
  exit 0
fi

failed=()
summary=()
for t in $targets; do
  mkdir -p "$work/corpus/$t" "$work/artifacts/$t"
  log="$work/$t.log"
  echo "fuzz: $t for ${seconds}s"
  # -timeout: one input taking over 10 s is a hang; -rss_limit_mb: memory per process.
  if cargo fuzz run --fuzz-dir tests/fuzz -O --debug-assertions "$t" "$work/corpus/$t" "tests/fuzz/corpus/$t" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=262144 \
      -artifact_prefix="$work/artifacts/$t/" -print_final_stats=1 ${FUZZ_SEED:+-seed=$FUZZ_SEED} >"$log" 2>&1; then
    status=ok
  else
    status=FAILED
    failed+=("$t")
    sed -n '/==ERROR\|panicked\|SUMMARY\|Test unit written/p' "$log" | sed -n '1,20p'
  fi
  stats=$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
  cov=$(printf '%s' "$stats" | sed -n 's/.*cov: \([0-9]*\).*/\1/p')
  ft=$(printf '%s' "$stats" | sed -n 's/.*ft: \([0-9]*\).*/\1/p')
  summary+=("$(printf '| %s | %s | %s | %s | %s | %s |' "$t" "$status" "${execs:-?}" "${speed:-?}" "${cov:-?}" "${ft:-?}")")
done

echo
echo "| target | result | executions | exec/s | coverage (edges) | features |"
echo "|---|---|---|---|---|---|"
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: ${failed[*]} failed; reproducers in $work/artifacts/ (see $work/TARGET.log)" >&2
  exit 1
fi
