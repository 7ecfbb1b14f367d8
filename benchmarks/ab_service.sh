#!/usr/bin/env bash
# Before/after: the service at another commit (default ee93d74, before the request-path work)
# against this checkout, same checkpoint and settings, side by side in one run.
#
#   benchmarks/ab_service.sh [REF] [SECONDS] [ROUNDS] [CLIENTS] [WORKERS]
#
# Each server runs with its own defaults (admission's queue-delay limit off, so both are measured
# at a fixed concurrency): since issue 19 this checkout's default is one worker per core, an older
# REF's one worker; WORKERS sets MFDV_WORKERS for both sides to compare the request path alone.
# Debian's `hey` posts one 28x28 PNG per request as multipart with samples=32, after a 2 s
# warm-up, in interleaved rounds. Prints req/s, p50 and p99 per run.
set -euo pipefail
ref=${1:-ee93d74}
secs=${2:-10}
rounds=${3:-2}
clients=${4:-32}
workers=${5:-}
here=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
ck="$here/checkpoints/fashion_mnist_mfdv"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  git -C "$here" worktree remove --force "$tmp/ref" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
git -C "$here" worktree add --detach "$tmp/ref" "$ref" >/dev/null 2>&1
python3 - "$here/samples/sneaker.png" "$tmp/body" <<'PY'
import sys
b = "abServiceBoundary"
png = open(sys.argv[1], "rb").read()
head = (
    f'--{b}\r\nContent-Disposition: form-data; name="samples"\r\n\r\n32\r\n'
    f'--{b}\r\nContent-Disposition: form-data; name="file"; filename="s.png"\r\nContent-Type: image/png\r\n\r\n'
)
open(sys.argv[2], "wb").write(head.encode() + png + f"\r\n--{b}--\r\n".encode())
PY
port() { python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"; }
declare -A url
for side in before after; do
  p=$(port)
  dir=$([ "$side" = before ] && echo "$tmp/ref" || echo "$here")
  (cd "$dir" && MFDV_MAX_QUEUE_DELAY_MS=0 exec env ${workers:+MFDV_WORKERS=$workers} python3 -m service --port "$p" --model-dir "$ck" --no-access-log \
    >"$tmp/$side.log" 2>&1) &
  pids+=($!)
  url[$side]="http://127.0.0.1:$p/v1/predict"
  until curl -sf "http://127.0.0.1:$p/readyz" >/dev/null; do sleep 1; done
done
load() { hey -z "$1" -c "$clients" -m POST -T "multipart/form-data; boundary=abServiceBoundary" -D "$tmp/body" "$2"; }
for side in before after; do load 2s "${url[$side]}" >/dev/null; done
echo "| round | side | commit | req/s | p50 ms | p99 ms | non-200 |"
echo "|---:|---|---|---:|---:|---:|---:|"
for r in $(seq "$rounds"); do
  for side in before after; do
    out=$(load "${secs}s" "${url[$side]}")
    commit=$([ "$side" = before ] && git -C "$here" rev-parse --short "$ref" || git -C "$here" rev-parse --short HEAD)
    rps=$(awk '/Requests\/sec/ {printf "%.0f", $2}' <<<"$out")
    p50=$(awk '/ 50% in/ {printf "%.1f", $3 * 1000}' <<<"$out")
    p99=$(awk '/ 99% in/ {printf "%.1f", $3 * 1000}' <<<"$out")
    bad=$(awk '/\[[0-9]+\]/ && $1 != "[200]" {n += $2} END {print n + 0}' <<<"$out")
    echo "| $r | $side | $commit | $rps | $p50 | $p99 | $bad |"
  done
done
