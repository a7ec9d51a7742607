#!/usr/bin/env bash
# Checks the README's promise on this machine: clones the repository (HEAD
# of this checkout) into a temporary folder with an empty target/, runs the
# README's two commands exactly as written, and prints the wall time of
# each. The demo must answer an inference; the test command must pass with
# no test skipped.
#   scripts/check-fresh-clone.sh            # both commands
#   scripts/check-fresh-clone.sh --demo     # the run command only
# The cargo registry is shared with this machine's (~/.cargo), as a
# newcomer's would be after their first `cargo` command.
set -euo pipefail
src="$(cd "$(dirname "$0")/.." && pwd)"
only_demo=0
[ "${1:-}" = --demo ] && only_demo=1
work="$(mktemp -d /tmp/ferry-fresh.XXXXXX)"
echo "== fresh clone in $work"
git clone --quiet "$src" "$work/ferry"
cd "$work/ferry"

# The two commands, as the README writes them.
run_cmd="$(sed -n '/^```sh$/,/^```$/p' README.md | sed -n 2p | sed 's/ *#.*//')"
test_cmd="$(sed -n '/^```sh$/,/^```$/p' README.md | sed -n 3p | sed 's/ *#.*//')"
echo "run command:  $run_cmd"
echo "test command: $test_cmd"

start=$(date +%s)
log="$work/demo.log"
: >"$log"
setsid bash -c "$run_cmd" >"$log" 2>&1 &
demo=$!
trap 'kill -INT -- -$demo 2>/dev/null || true' EXIT
until grep -q "ferry demo ready" "$log"; do
  if ! kill -0 "$demo" 2>/dev/null; then
    echo "the run command exited before the demo was ready:"; tail -40 "$log"; exit 1
  fi
  sleep 2
done
ready=$(( $(date +%s) - start ))
curl_line="$(grep -m1 "curl -s" "$log" | sed 's/^ *//')"
answer="$(bash -c "$curl_line")"
echo "$answer" | grep -q '"outputs"' || { echo "no inference answer: $answer"; exit 1; }
echo "demo answered an inference: $(echo "$answer" | head -c 200)"
kill -INT -- -"$demo" 2>/dev/null || true
wait "$demo" 2>/dev/null || true
trap - EXIT
printf 'RESULT run command: %d s from a fresh clone to "ferry demo ready" (build included)\n' "$ready"
[ "$only_demo" = 1 ] && exit 0

start=$(date +%s)
status=0
bash -c "$test_cmd" >"$work/test.log" 2>&1 || status=$?
took=$(( $(date +%s) - start ))
passed=$(grep -Eo '[0-9]+ passed' "$work/test.log" | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed' "$work/test.log" | awk '{s+=$1} END {print s+0}')
skipped=0
[ -s target/ferry-skipped.txt ] && skipped=$(wc -l <target/ferry-skipped.txt)
printf 'RESULT test command: %d s, exit %d, %d passed, %d failed, %d skipped\n' "$took" "$status" "$passed" "$failed" "$skipped"
[ "$status" = 0 ] && [ "$skipped" = 0 ]
