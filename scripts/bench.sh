#!/usr/bin/env bash
# Runs every benchmark harness: mq against ruststream, omniqueue and the raw
# clients on the same brokers (benches/peers, a workspace of its own), then
# each crate's own harness (mq against its raw client, the instrumented
# contenders, the router). Figures only: nothing here passes or fails on a
# number. BENCHMARKS.md says what each one printed.
#
#   scripts/bench.sh                       # everything
#   scripts/bench.sh --peers-only          # only benches/peers
#   scripts/bench.sh --backends memory,redis --rounds 7   # passed to benches/peers
#
# Brokers: RabbitMQ from MQ_TEST_AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/%2f),
# Redis from MQ_TEST_REDIS_URL (default redis://127.0.0.1:6379/15; each round
# deletes its own keys, nothing is flushed), Kafka from MQ_TEST_KAFKA_BROKERS
# or librdkafka's mock cluster (3 brokers, in the process).
#
# Writes benches/results/peers.json, peers.csv and one SVG chart per backend
# (embedded by BENCHMARKS.md); the crates' harnesses print to the terminal
# and to benches/results/crates.log.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/mq-target}"
export MQ_TEST_REDIS_URL="${MQ_TEST_REDIS_URL:-redis://127.0.0.1:6379/15}"
export MQ_TEST_AMQP_URL="${MQ_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"

log() { printf '==> %s\n' "$*" >&2; }

peers_only=false
args=()
for a in "$@"; do
  case "$a" in
    --peers-only) peers_only=true ;;
    *) args+=("$a") ;;
  esac
done

start=$SECONDS
out=benches/results
mkdir -p "$out"

log "building benches/peers (release)"
cargo build --release --manifest-path benches/peers/Cargo.toml
log "mq against its peers and the raw clients"
"$CARGO_TARGET_DIR/release/mq-peers" --out "$out" "${args[@]+"${args[@]}"}"

if ! $peers_only; then
  : > "$out/crates.log"
  for bench in "mq-memory throughput" "mq-memory router" "mq-memory per_op" "mq-memory recorder" \
               "mq-redis throughput" "mq-rabbit throughput" "mq-kafka throughput"; do
    set -- $bench
    log "cargo bench -p $1 --bench $2"
    cargo bench -q -p "$1" --bench "$2" 2>&1 | tee -a "$out/crates.log"
  done
fi
log "took $((SECONDS - start)) s"
