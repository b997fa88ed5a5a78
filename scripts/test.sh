#!/usr/bin/env bash
# The README's test command: makes the brokers the tests need available,
# then checks formatting and lints and runs every test of the workspace.
#
#   scripts/test.sh            # everything
#   scripts/test.sh -p mq-core # extra arguments go to `cargo test`
#
# Brokers: a test finds its broker from MQ_TEST_AMQP_URL, MQ_TEST_REDIS_URL
# and MQ_TEST_KAFKA_BROKERS. When unset, this script uses a broker already
# listening on its default loopback port; failing that, on Debian as root,
# it installs (apt-get) and starts one. Brokers are only provisioned for the
# adapter crates that have tests.
#
# What the tests leave on a broker: on RabbitMQ a virtual host of this run's
# own (`mq-test-<pid>-<random>`), created here and deleted when the run
# ends; on Redis (database 15) the tests' keys, all named `*mqkit-*`, which
# are deleted when the run ends. Nothing else on the machine's brokers is
# flushed, deleted or restarted. Fault tests start private brokers of their
# own on free ports.
set -euo pipefail
cd "$(dirname "$0")/.."

# Builds are reused across clones (CI clones afresh on this machine).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/mq-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# port_open PORT: something listens on 127.0.0.1:PORT.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_port PORT SECONDS
wait_port() {
  local port=$1 deadline=$((SECONDS + $2))
  until port_open "$port"; do
    ((SECONDS < deadline)) || return 1
    sleep 1
  done
}

can_install() { [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; }

apt_install() {
  can_install || return 1
  log "installing $* (apt-get)"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

has_tests() { [[ -d "$1/tests" ]] && compgen -G "$1/tests/*.rs" >/dev/null; }

ensure_redis() {
  if [[ -n ${MQ_TEST_REDIS_URL:-} ]]; then return; fi
  if ! port_open 6379; then
    command -v redis-server >/dev/null || apt_install redis-server ||
      die "no Redis on 127.0.0.1:6379 and cannot install one; set MQ_TEST_REDIS_URL=redis://host:port"
    log "starting redis-server on 127.0.0.1:6379"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
    wait_port 6379 30 || die "redis-server did not start; set MQ_TEST_REDIS_URL=redis://host:port"
  fi
  # The tests use database 15 and name every key `*mqkit-*`; those keys go
  # when the run ends (nothing else is flushed: the server is shared).
  export MQ_TEST_REDIS_URL="redis://127.0.0.1:6379/15"
  if command -v redis-cli >/dev/null; then
    cleanups+=(cleanup_redis)
  fi
}

cleanup_redis() {
  redis-cli -n 15 --scan --pattern '*mqkit-*' 2>/dev/null |
    xargs -r -n 500 redis-cli -n 15 UNLINK >/dev/null 2>&1 || true
}

ensure_rabbitmq() {
  if [[ -n ${MQ_TEST_AMQP_URL:-} ]]; then return; fi
  if ! port_open 5672; then
    command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server ||
      die "no RabbitMQ on 127.0.0.1:5672 and cannot install one; set MQ_TEST_AMQP_URL=amqp://user:pass@host:5672"
    log "starting rabbitmq-server"
    rabbitmq-server -detached >/dev/null 2>&1 || true
    wait_port 5672 120 || die "rabbitmq-server did not start; set MQ_TEST_AMQP_URL=amqp://user:pass@host:5672"
  fi
  # Tests get a virtual host of this run's own, deleted when the run ends:
  # runs do not pile up queues and exchanges on the machine's server, and
  # nothing of anyone else's is touched.
  if command -v rabbitmqctl >/dev/null; then
    rabbit_vhost="mq-test-$$-$RANDOM"
    rabbitmqctl -q add_vhost "$rabbit_vhost" >/dev/null || die "cannot create the RabbitMQ vhost $rabbit_vhost"
    cleanups+=(cleanup_rabbitmq)
    rabbitmqctl -q set_permissions -p "$rabbit_vhost" guest '.*' '.*' '.*' >/dev/null ||
      die "cannot grant guest access to the vhost $rabbit_vhost"
    export MQ_TEST_AMQP_URL="amqp://guest:guest@127.0.0.1:5672/$rabbit_vhost"
  else
    export MQ_TEST_AMQP_URL="amqp://guest:guest@127.0.0.1:5672/%2f"
  fi
}

cleanup_rabbitmq() {
  rabbitmqctl -q delete_vhost "$rabbit_vhost" >/dev/null 2>&1 || true
}

# What to undo when the run ends, however it ends.
cleanups=()
out=""
on_exit() {
  local c
  for c in "${cleanups[@]}"; do "$c"; done
  [[ -n $out ]] && rm -f "$out"
  [[ -n ${MQ_TEST_REPORT_DIR:-} ]] && rm -rf "$MQ_TEST_REPORT_DIR"
  return 0
}
trap on_exit EXIT

started=$SECONDS

# rdkafka builds its bundled librdkafka: a C compiler and make.
if ! command -v cc >/dev/null || ! command -v make >/dev/null; then
  apt_install build-essential || die "mq-kafka needs a C compiler and make to build librdkafka; install them (build-essential)"
fi

has_tests mq-redis && ensure_redis
has_tests mq-rabbit && ensure_rabbitmq
# mq-kafka runs on librdkafka's embedded mock cluster unless
# MQ_TEST_KAFKA_BROKERS names a real one: nothing to provision.

log "cargo fmt --check"
cargo fmt --all -- --check || die "code is not formatted: run cargo fmt --all"

log "cargo clippy"
cargo clippy --workspace --all-targets --all-features -- -D warnings

log "cargo doc"
RUSTDOCFLAGS=-Dwarnings cargo doc --workspace --no-deps --all-features --quiet

log "cargo test"
out="$(mktemp)"
# Figures the tests measured (fault suites, timings), printed at the end.
MQ_TEST_REPORT_DIR="$(mktemp -d)"
export MQ_TEST_REPORT_DIR
# Every test binary runs, also after one fails; the run fails at the end.
status=0
cargo test --workspace --all-features --no-fail-fast "$@" 2>&1 | tee "$out" || status=$?
if [[ -s $MQ_TEST_REPORT_DIR/report.txt ]]; then
  log "figures the tests measured"
  sort "$MQ_TEST_REPORT_DIR/report.txt"
fi
# One closing line for the whole run (cargo prints one per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$out"
log "took $((SECONDS - started)) s"
exit "$status"
