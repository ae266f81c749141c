#!/usr/bin/env bash
# The fuzz stage of CI (`.ci/run`) and `make fuzz`: builds every target from the committed
# fuzz/Cargo.lock, then runs each for FUZZ_SECONDS (default 20) over a scratch corpus seeded from
# fuzz/seeds/<target>. A crash, timeout or OOM fails the stage; the failing input is printed in
# base64 and copied into fuzz/seeds/<target>/ so that it can be committed as a regression seed
# (see fuzz/README.md, "When CI finds a crash").
set -euo pipefail
cd "$(dirname "$0")/.."
export RUSTC_BOOTSTRAP=1 CARGO_TERM_COLOR=never
seconds=${FUZZ_SECONDS:-20}
# Release code with debug assertions and overflow checks (an overflow is a crash, as in `cargo
# test`); no sanitizer: the fuzzed code is safe Rust (and aws-lc, which is not ours to fuzz), and
# ASan would double the build time and halve the executions.
flags=(--release --debug-assertions --sanitizer none)

command -v cargo-fuzz >/dev/null || cargo install -q cargo-fuzz --locked

# `cargo fuzz build` cannot pass --locked: fetching with it fails the same way when
# fuzz/Cargo.lock no longer matches fuzz/Cargo.toml or the wechat crate's manifest.
(cd fuzz && cargo fetch --locked -q)
# Every package both lockfiles hold is at the root's version, so the fuzzed `wechat` is the one the
# services run.
drift=$(awk '
  FNR == 1 { file++; name = "" }
  /^name = / { name = $3 }
  /^version = / && name != "" { if (file == 1) root[name] = root[name] " " $3; else if (name in root && index(root[name] " ", " " $3 " ") == 0) print name, $3, "(root:" root[name] ")" }
' Cargo.lock fuzz/Cargo.lock)
if [[ -n "$drift" ]]; then
  echo "fuzz/Cargo.lock is not in step with Cargo.lock:"
  echo "$drift"
  echo 'refresh it with: cp Cargo.lock fuzz/Cargo.lock && (cd fuzz && cargo metadata --format-version 1 >/dev/null)'
  exit 1
fi

cargo fuzz build "${flags[@]}"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
# Runs one target; its log, exit status and any failing input stay in $scratch/<target>/.
run() {
  local target=$1 dir=$scratch/$1
  mkdir -p "$dir/corpus" "$dir/artifacts"
  # -timeout: one input running 10 s is a hang; -rss_limit_mb: libFuzzer's default, said aloud.
  if cargo fuzz run "${flags[@]}" "$target" "$dir/corpus" "fuzz/seeds/$target" -- \
    -max_total_time="$seconds" -max_len=4096 -timeout=10 -rss_limit_mb=2048 \
    -artifact_prefix="$dir/artifacts/" >"$dir/log" 2>&1; then
    echo 0 >"$dir/status"
  else
    echo $? >"$dir/status"
  fi
}

# Two targets at a time: CI has two cores and a libFuzzer process uses one.
targets=$(cargo fuzz list)
for target in $targets; do
  while (($(jobs -rp | wc -l) >= 2)); do wait -n; done
  run "$target" &
done
wait

failed=0
for target in $targets; do
  if [[ $(cat "$scratch/$target/status") == 0 ]]; then
    echo "$target: $(grep -o 'Done [0-9]* runs in [0-9]* second' "$scratch/$target/log" | tail -1)"
    continue
  fi
  failed=1
  # 30 lines of the log from the first sign of the failure (a panic, a timeout, an OOM), or its end.
  echo "!! $target failed:"
  failure='panicked at|ERROR: libFuzzer|ALARM: working on the last Unit'
  if grep -aqE "$failure" "$scratch/$target/log"; then
    awk -v re="$failure" '!seen && $0 ~ re { seen = 1; n = 30 } n-- > 0 { print "   " $0 }' "$scratch/$target/log"
  else
    tail -n 30 "$scratch/$target/log" | sed 's/^/   /'
  fi
  for input in "$scratch/$target/artifacts"/*; do
    [[ -f "$input" ]] || continue
    kept=fuzz/seeds/$target/$(basename "$input")
    cp "$input" "$kept"
    echo "!! failing input kept as $kept (commit it as a regression seed once fixed); base64:"
    base64 -w0 "$input"
    echo
  done
done
exit "$failed"
