#!/usr/bin/env bash
# Local services for stream-monitor development and tests: a single-node Apache Kafka broker (KRaft,
# combined broker+controller) and a Redis server, both bound to 127.0.0.1 only.
#
#   scripts/services.sh up       start (or reuse) both, wait until they answer, write .services/env
#   scripts/services.sh down     stop what `up` started (by PID), remove pid files and .services/env
#   scripts/services.sh status   show what is running and whether it answers (exit 3 if something does not)
#   scripts/services.sh env      print .services/env (source it to point stream-monitor at the services)
#   scripts/services.sh plan     print what `up` would install first ("install: ..." lines), if anything
#
# Knobs (environment): SM_KAFKA_PORT (19092), SM_KAFKA_CONTROLLER_PORT (19093), SM_REDIS_PORT (16379),
# STREAM_MONITOR_CACHE (~/.cache/stream-monitor; Kafka jars), KAFKA_HOME (use $KAFKA_HOME/libs instead),
# PYTHON (python3; used for the Kafka readiness check), JAVA_HOME, SM_KAFKA_WAIT_S (60), SM_REDIS_WAIT_S (20).
# STREAM_MONITOR_KAFKA_BOOTSTRAP / STREAM_MONITOR_REDIS_URL set in the environment mean "use mine": that
# service is not started, only waited for. See docs/development.md.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SERVICES_DIR="$ROOT/.services"
ENV_FILE="$SERVICES_DIR/env"

KAFKA_VERSION=4.1.1
SCALA_VERSION=2.13
LOG4J_VERSION=2.24.3
KAFKA_PORT="${SM_KAFKA_PORT:-19092}"
KAFKA_CONTROLLER_PORT="${SM_KAFKA_CONTROLLER_PORT:-19093}"
REDIS_PORT="${SM_REDIS_PORT:-16379}"
CACHE_DIR="${STREAM_MONITOR_CACHE:-${HOME:?HOME is not set; set STREAM_MONITOR_CACHE}/.cache/stream-monitor}"
PY="${PYTHON:-python3}"
KAFKA_WAIT_S="${SM_KAFKA_WAIT_S:-60}"
REDIS_WAIT_S="${SM_REDIS_WAIT_S:-20}"
STOP_WAIT_S=20

KAFKA_DIR="$SERVICES_DIR/kafka"
KAFKA_PROPS="$KAFKA_DIR/server.properties"
KAFKA_LOG4J="$KAFKA_DIR/log4j2.properties"
KAFKA_DATA="$KAFKA_DIR/data"
KAFKA_BROKER_LOG="$KAFKA_DIR/broker.log"
KAFKA_OUT="$SERVICES_DIR/kafka.log"
REDIS_DIR="$SERVICES_DIR/redis"
REDIS_OUT="$SERVICES_DIR/redis.log"

LOCAL_KAFKA_BOOTSTRAP="127.0.0.1:$KAFKA_PORT"
LOCAL_REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"

JAVA=java
if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then
  JAVA="$JAVA_HOME/bin/java"
fi

log() { printf '[services] %s\n' "$*" >&2; }
die() {
  printf '[services] ERROR: %s\n' "$*" >&2
  exit 1
}

for _port in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT" "$REDIS_PORT"; do
  [[ "$_port" =~ ^[0-9]+$ ]] || die "ports must be numbers (got '$_port'; see SM_KAFKA_PORT, SM_KAFKA_CONTROLLER_PORT, SM_REDIS_PORT)"
done

# ---------------------------------------------------------------------------------------------- helpers

with_timeout() { # seconds cmd... ; `timeout` is coreutils, but do not insist on it
  local secs=$1
  shift
  if command -v timeout >/dev/null 2>&1; then
    timeout "$secs" "$@"
  else
    "$@"
  fi
}

tcp_open() { # host port -> 0 when something accepts a TCP connection there
  # shellcheck disable=SC2016  # expanded by the inner bash
  with_timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$1" "$2" 2>/dev/null
}

tail_log() { # file [lines]
  local f=$1 n=${2:-40}
  if [[ -s "$f" ]]; then
    printf '[services] ---- last %s lines of %s ----\n' "$n" "$f" >&2
    tail -n "$n" "$f" >&2 || true
    printf '[services] ---- end of %s ----\n' "$f" >&2
  fi
}

is_alive() { # pid -> 0 when the process exists and is not a zombie
  local pid=$1
  kill -0 "$pid" 2>/dev/null || return 1
  if [[ -r "/proc/$pid/status" ]] && grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null; then
    return 1
  fi
  return 0
}

show_cmdline() { # pid ; for messages
  cmdline_of "$1" | sed 's/[[:space:]]*$//'
}

cmdline_of() { # pid
  local pid=$1
  if [[ -r "/proc/$pid/cmdline" ]]; then
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true
  else
    ps -o command= -p "$pid" 2>/dev/null || true
  fi
}

is_ours() { # name pid -> 0 when pid is the process `up` started for that service (guards against PID reuse)
  local name=$1 pid=$2 cmd cwd
  cmd="$(cmdline_of "$pid")"
  case "$name" in
    kafka)
      [[ "$cmd" == *kafka.Kafka* && "$cmd" == *"$KAFKA_PROPS"* ]]
      ;;
    redis)
      [[ "$cmd" == *redis-server* ]] || return 1
      # redis rewrites its title to "redis-server 127.0.0.1:PORT"; its working directory is --dir.
      cwd="$(readlink "/proc/$pid/cwd" 2>/dev/null || true)"
      [[ "$cwd" == "$REDIS_DIR" || "$cmd" == *":$REDIS_PORT "* || "$cmd" == *"--port $REDIS_PORT "* ]]
      ;;
    *) return 1 ;;
  esac
}

owned_pid() { # name -> prints the PID of our running instance, or returns 1
  local name=$1 pidfile="$SERVICES_DIR/$1.pid" pid
  [[ -f "$pidfile" ]] || return 1
  pid="$(head -n 1 "$pidfile" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  is_alive "$pid" || return 1
  is_ours "$name" "$pid" || return 1
  printf '%s\n' "$pid"
}

spawn() { # name logfile cmd... ; starts cmd detached, stdout+stderr -> logfile, PID -> .services/<name>.pid
  local name=$1 logfile=$2
  shift 2
  local pidfile="$SERVICES_DIR/$name.pid" launcher=() i
  rm -f "$pidfile" "$pidfile.tmp"
  # Own session, so a Ctrl-C in the terminal does not hit the services (`down` stops them cleanly).
  if command -v setsid >/dev/null 2>&1; then
    launcher=(setsid)
  fi
  # The wrapper writes its own PID and then execs the service, so the PID file is exact even if setsid
  # forks. fd 9 (the lock) is closed so the service does not hold it.
  # shellcheck disable=SC2016  # expanded by the inner bash
  ${launcher[@]+"${launcher[@]}"} bash -c 'echo "$$" >"$0.tmp" && mv -f "$0.tmp" "$0" && exec "$@"' \
    "$pidfile" "$@" </dev/null >>"$logfile" 2>&1 9>&- &
  for ((i = 0; i < 100; i++)); do
    [[ -s "$pidfile" ]] && return 0
    sleep 0.1
  done
  die "$name did not start (no PID file after 10 s); see $logfile"
}

stop_service() { # name ; TERM, wait up to STOP_WAIT_S, then KILL. Only ever signals our own PID.
  local name=$1 pidfile="$SERVICES_DIR/$1.pid" pid i
  if [[ ! -f "$pidfile" ]]; then
    log "$name: not running (no $pidfile)"
    return 0
  fi
  pid="$(head -n 1 "$pidfile" 2>/dev/null || true)"
  if ! [[ "$pid" =~ ^[0-9]+$ ]] || ! is_alive "$pid"; then
    log "$name: not running (stale PID file removed)"
    rm -f "$pidfile"
    return 0
  fi
  if ! is_ours "$name" "$pid"; then
    log "$name: PID $pid is not the $name we started (cmdline: $(show_cmdline "$pid")); leaving it alone"
    rm -f "$pidfile"
    return 0
  fi
  log "$name: stopping PID $pid"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < STOP_WAIT_S * 10; i++)); do
    is_alive "$pid" || break
    sleep 0.1
  done
  if is_alive "$pid" && is_ours "$name" "$pid"; then
    log "$name: still running after ${STOP_WAIT_S}s, sending KILL"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
      is_alive "$pid" || break
      sleep 0.1
    done
  fi
  if is_alive "$pid"; then
    die "$name: PID $pid did not exit"
  fi
  rm -f "$pidfile"
  log "$name: stopped"
}

take_lock() { # serialise up/down; fd 9 stays open for the life of this script
  mkdir -p "$SERVICES_DIR"
  if command -v flock >/dev/null 2>&1; then
    exec 9>"$SERVICES_DIR/.lock"
    flock -w 300 9 || die "another scripts/services.sh is holding $SERVICES_DIR/.lock"
  fi
}

# Values exported by our own .services/env do not count as "the user's own service": if a shell sourced it
# and the services were later stopped, `up` must start them again rather than wait for nothing.
is_managed_value() { # service value
  [[ " ${SM_SERVICES_MANAGED:-} " == *" $1 "* ]] || return 1
  case "$1" in
    kafka) [[ "$2" == "$LOCAL_KAFKA_BOOTSTRAP" ]] ;;
    redis) [[ "$2" == "$LOCAL_REDIS_URL" ]] ;;
    *) return 1 ;;
  esac
}

kafka_external() {
  [[ -n "${STREAM_MONITOR_KAFKA_BOOTSTRAP:-}" ]] && ! is_managed_value kafka "$STREAM_MONITOR_KAFKA_BOOTSTRAP"
}

redis_external() {
  [[ -n "${STREAM_MONITOR_REDIS_URL:-}" ]] && ! is_managed_value redis "$STREAM_MONITOR_REDIS_URL"
}

# ---------------------------------------------------------------------------------------------- Kafka

check_java() {
  local out major
  command -v "$JAVA" >/dev/null 2>&1 ||
    die "Java 17+ is needed to run the Kafka broker, and '$JAVA' was not found.
    Debian/Ubuntu: apt-get install -y openjdk-17-jre-headless   (or set JAVA_HOME)
    Or run your own broker and set STREAM_MONITOR_KAFKA_BOOTSTRAP=host:port."
  out="$("$JAVA" -version 2>&1)" || die "'$JAVA -version' failed: $out"
  if [[ "$out" =~ version\ \"([0-9]+)(\.([0-9]+))? ]]; then
    major="${BASH_REMATCH[1]}"
    [[ "$major" == 1 ]] && major="${BASH_REMATCH[3]:-0}"
  else
    die "could not read the Java version from: $out"
  fi
  ((major >= 17)) || die "Kafka $KAFKA_VERSION needs Java 17+, but '$JAVA' is Java $major.
    Install a newer JDK (Debian/Ubuntu: apt-get install -y openjdk-17-jre-headless) and/or set JAVA_HOME."
}

KAFKA_LIBS=""
ensure_kafka_libs() { # sets KAFKA_LIBS; downloads the jars with mvn into the cache on first use
  if [[ -n "${KAFKA_HOME:-}" ]]; then
    KAFKA_LIBS="$KAFKA_HOME/libs"
    compgen -G "$KAFKA_LIBS/kafka_*.jar" >/dev/null ||
      die "KAFKA_HOME=$KAFKA_HOME, but $KAFKA_LIBS has no kafka_*.jar (expected an Apache Kafka 4.x distribution)"
    return 0
  fi
  local base="$CACHE_DIR/kafka-$KAFKA_VERSION"
  KAFKA_LIBS="$base/libs"
  if [[ -f "$KAFKA_LIBS/kafka_$SCALA_VERSION-$KAFKA_VERSION.jar" ]]; then
    return 0
  fi
  command -v mvn >/dev/null 2>&1 ||
    die "the Kafka $KAFKA_VERSION jars are not cached in $KAFKA_LIBS and Maven ('mvn') is not installed to fetch them.
    Install Maven (Debian/Ubuntu: apt-get install -y maven), or set KAFKA_HOME to an unpacked Kafka 4.x
    distribution, or run your own broker and set STREAM_MONITOR_KAFKA_BOOTSTRAP=host:port."
  mkdir -p "$base"
  local tmp
  tmp="$(mktemp -d "$base/.fetch.XXXXXX")"
  cat >"$tmp/pom.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<!-- generated by stream-monitor scripts/services.sh: the runtime classpath of a Kafka broker -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.stream-monitor</groupId>
  <artifactId>kafka-broker-runtime</artifactId>
  <version>$KAFKA_VERSION</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_$SCALA_VERSION</artifactId>
      <version>$KAFKA_VERSION</version>
    </dependency>
    <!-- Kafka's slf4j-api is 1.7.x: the SLF4J 1.x binding (log4j-slf4j-impl), not log4j-slf4j2-impl. -->
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>$LOG4J_VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-core</artifactId>
      <version>$LOG4J_VERSION</version>
    </dependency>
  </dependencies>
</project>
EOF
  log "fetching Kafka $KAFKA_VERSION jars with Maven into $KAFKA_LIBS (first run only)"
  if ! mvn -q -B -f "$tmp/pom.xml" dependency:copy-dependencies -DoutputDirectory="$tmp/libs" \
    </dev/null >"$tmp/mvn.log" 2>&1 9>&-; then
    tail_log "$tmp/mvn.log" 60
    rm -rf "$tmp"
    die "mvn could not fetch the Kafka jars (network? proxy? see the output above)"
  fi
  if [[ ! -f "$tmp/libs/kafka_$SCALA_VERSION-$KAFKA_VERSION.jar" ]] ||
    ! compgen -G "$tmp/libs/log4j-slf4j-impl-*.jar" >/dev/null; then
    rm -rf "$tmp"
    die "mvn finished but the Kafka/log4j jars are missing from its output"
  fi
  # Atomic: the cache dir appears complete or not at all.
  if [[ -e "$KAFKA_LIBS" ]]; then
    rm -rf "$KAFKA_LIBS"
  fi
  mv "$tmp/libs" "$KAFKA_LIBS"
  rm -rf "$tmp"
  log "cached $(find "$KAFKA_LIBS" -name '*.jar' | wc -l | tr -d ' ') jars in $KAFKA_LIBS"
}

write_kafka_config() {
  mkdir -p "$KAFKA_DIR" "$KAFKA_DATA"
  cat >"$KAFKA_PROPS" <<EOF
# generated by scripts/services.sh; rewritten on every \`up\`
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$KAFKA_DATA
num.partitions=4
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=10
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
EOF
  cat >"$KAFKA_LOG4J" <<EOF
# generated by scripts/services.sh: broker logs -> $KAFKA_BROKER_LOG
status = warn
name = stream-monitor-kafka
appender.broker.type = File
appender.broker.name = BROKER
appender.broker.fileName = $KAFKA_BROKER_LOG
appender.broker.append = true
appender.broker.layout.type = PatternLayout
appender.broker.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.broker.ref = BROKER
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.requestchannel.name = kafka.network.RequestChannel\$
logger.requestchannel.level = WARN
logger.authorizer.name = kafka.authorizer.logger
logger.authorizer.level = WARN
EOF
}

new_cluster_id() { # 16 random bytes, base64url without padding (what StorageTool random-uuid prints)
  # Like Kafka's Uuid.randomUuid, reject an id starting with "-": the format tool's argument parser would read it
  # as an option (a 1-in-64 failure seen in CI: "argument --cluster-id/-t: expected one argument").
  local id="-"
  while [[ "$id" == -* ]]; do
    id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
  done
  printf '%s' "$id"
}

start_kafka() { # prints nothing; spawns the broker (formats the storage first if needed)
  local jvm_log4j="-Dlog4j2.configurationFile=$KAFKA_LOG4J"
  if [[ ! -f "$KAFKA_DATA/meta.properties" ]]; then
    local cid
    cid="$(new_cluster_id)"
    log "kafka: formatting $KAFKA_DATA (cluster id $cid)"
    if ! "$JAVA" "$jvm_log4j" -cp "$KAFKA_LIBS/*" kafka.tools.StorageTool format -t "$cid" -c "$KAFKA_PROPS" \
      </dev/null >"$KAFKA_DIR/format.log" 2>&1 9>&-; then
      tail_log "$KAFKA_DIR/format.log"
      die "kafka: formatting the storage directory failed"
    fi
  fi
  # One previous generation of each log is kept.
  [[ -f "$KAFKA_BROKER_LOG" ]] && mv -f "$KAFKA_BROKER_LOG" "$KAFKA_BROKER_LOG.prev"
  [[ -f "$KAFKA_OUT" ]] && mv -f "$KAFKA_OUT" "$KAFKA_OUT.prev"
  log "kafka: starting broker on $LOCAL_KAFKA_BOOTSTRAP (controller 127.0.0.1:$KAFKA_CONTROLLER_PORT)"
  spawn kafka "$KAFKA_OUT" "$JAVA" -Xmx512m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
    "$jvm_log4j" -cp "$KAFKA_LIBS/*" kafka.Kafka "$KAFKA_PROPS"
}

KAFKA_CHECK_MODE=""
kafka_check_mode() {
  if [[ -z "$KAFKA_CHECK_MODE" ]]; then
    if "$PY" -c 'import confluent_kafka' >/dev/null 2>&1; then
      KAFKA_CHECK_MODE=python
    else
      KAFKA_CHECK_MODE=tcp
      log "note: '$PY' cannot import confluent_kafka; Kafka readiness falls back to a TCP port check" \
        "(set PYTHON=.venv/bin/python for the real check)"
    fi
  fi
}

PROBE_OUT=""
kafka_probe() { # bootstrap external(0/1) -> 0 when the broker answers a metadata request
  local bs=$1 external=$2 rc=0
  kafka_check_mode
  if [[ "$KAFKA_CHECK_MODE" == python ]]; then
    PROBE_OUT="$(with_timeout 15 "$PY" - "$bs" "$external" 2>&1 <<'PYEOF'
import os
import sys

from confluent_kafka.admin import AdminClient

conf = {"bootstrap.servers": sys.argv[1], "log_level": 0}
if sys.argv[2] == "1":  # the user's own broker: honour the same settings stream-monitor reads
    env = os.environ.get
    if env("STREAM_MONITOR_KAFKA_SECURITY_PROTOCOL"):
        conf["security.protocol"] = env("STREAM_MONITOR_KAFKA_SECURITY_PROTOCOL")
    if env("STREAM_MONITOR_KAFKA_SASL_MECHANISM"):
        conf["sasl.mechanism"] = env("STREAM_MONITOR_KAFKA_SASL_MECHANISM")
        conf["sasl.username"] = env("STREAM_MONITOR_KAFKA_SASL_USERNAME", "")
        conf["sasl.password"] = env("STREAM_MONITOR_KAFKA_SASL_PASSWORD", "")
try:
    md = AdminClient(conf).list_topics(timeout=3)
except Exception as exc:
    print(f"list_topics failed: {exc}")
    sys.exit(1)
if not md.brokers:
    print("metadata has no brokers yet")
    sys.exit(1)
print(f"{len(md.brokers)} broker(s), {len(md.topics)} topic(s)")
PYEOF
    )" || rc=$?
    return "$rc"
  fi
  local first="${bs%%,*}"
  first="${first#*://}"
  local host="${first%:*}" port="${first##*:}"
  if ! tcp_open "$host" "$port"; then
    PROBE_OUT="nothing accepts connections on $host:$port"
    return 1
  fi
  # For our own broker the port opens a little before it is ready; its log says when it is.
  if [[ "$external" == 0 ]] && ! grep -q 'Kafka Server started' "$KAFKA_BROKER_LOG" 2>/dev/null; then
    PROBE_OUT="port open, broker log does not say 'Kafka Server started' yet"
    return 1
  fi
  PROBE_OUT="port $host:$port open"
  return 0
}

wait_kafka() { # bootstrap external(0/1) [pid]
  local bs=$1 external=$2 pid=${3:-} deadline=$((SECONDS + KAFKA_WAIT_S))
  while :; do
    if kafka_probe "$bs" "$external"; then
      log "kafka: ready at $bs ($PROBE_OUT)"
      return 0
    fi
    if [[ -n "$pid" ]] && ! is_alive "$pid"; then
      tail_log "$KAFKA_OUT"
      tail_log "$KAFKA_BROKER_LOG"
      log "kafka: the broker (PID $pid) exited during startup; logs: $KAFKA_OUT, $KAFKA_BROKER_LOG"
      return 1
    fi
    if ((SECONDS >= deadline)); then
      if [[ "$external" == 1 ]]; then
        log "kafka: STREAM_MONITOR_KAFKA_BOOTSTRAP=$bs did not answer within ${KAFKA_WAIT_S}s ($PROBE_OUT)."
        log "kafka: unset STREAM_MONITOR_KAFKA_BOOTSTRAP to let scripts/services.sh start a local broker."
      else
        tail_log "$KAFKA_OUT"
        tail_log "$KAFKA_BROKER_LOG"
        log "kafka: no answer from $bs within ${KAFKA_WAIT_S}s ($PROBE_OUT); logs: $KAFKA_OUT, $KAFKA_BROKER_LOG"
      fi
      return 1
    fi
    sleep 1
  done
}

# ---------------------------------------------------------------------------------------------- Redis

ensure_redis_server() {
  command -v redis-server >/dev/null 2>&1 && return 0
  command -v apt-get >/dev/null 2>&1 ||
    die "redis-server is not on PATH and this is not a Debian/Ubuntu system (no apt-get).
    Install Redis 6+ so that redis-server and redis-cli are on PATH, or run your own Redis and set
    STREAM_MONITOR_REDIS_URL=redis://host:port/0."
  local sudo=()
  if [[ "$(id -u)" != 0 ]]; then
    command -v sudo >/dev/null 2>&1 ||
      die "redis-server is missing and installing it needs root: run 'apt-get install -y redis-server' as root"
    if [[ -t 0 ]]; then
      sudo=(sudo)
    else
      sudo=(sudo -n) # no terminal to ask for a password on
    fi
  fi
  local apt=(${sudo[@]+"${sudo[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get)
  log "redis: redis-server not found; installing Debian's redis-server package"
  if ! "${apt[@]}" install -y -q redis-server </dev/null >&2; then
    log "redis: install failed; running apt-get update and retrying"
    "${apt[@]}" update -q </dev/null >&2 || die "apt-get update failed"
    "${apt[@]}" install -y -q redis-server </dev/null >&2 || die "apt-get install redis-server failed"
  fi
  hash -r
  command -v redis-server >/dev/null 2>&1 || die "redis-server is still not on PATH after installing it"
  # The package may also start the distribution's own instance (systemd/init, port 6379). We never use it:
  # our instance runs on $REDIS_PORT from .services/redis and is the only one we wait for.
  log "redis: installed $(redis-server --version | head -n 1)" || true
}

redis_host_port() { # url -> "host port"
  local url=$1 rest hostport
  rest="${url#*://}"
  rest="${rest%%/*}"
  hostport="${rest##*@}"
  if [[ "$hostport" == *:* ]]; then
    printf '%s %s\n' "${hostport%:*}" "${hostport##*:}"
  else
    printf '%s 6379\n' "$hostport"
  fi
}

redis_probe() { # url -> 0 when the server answers PING
  local url=$1 host port
  read -r host port < <(redis_host_port "$url")
  if command -v redis-cli >/dev/null 2>&1; then
    PROBE_OUT="$(with_timeout 5 redis-cli -u "$url" --no-auth-warning ping 2>&1 </dev/null || true)"
  else
    # No redis-cli: speak RESP by hand (works for servers without AUTH/TLS).
    # shellcheck disable=SC2016  # expanded by the inner bash
    PROBE_OUT="$(with_timeout 5 bash -c 'exec 3<>"/dev/tcp/$0/$1" || exit 1
      printf "PING\r\n" >&3; IFS= read -r -t 3 line <&3; printf "%s" "${line#+}" | tr -d "\r"' \
      "$host" "$port" 2>&1 || true)"
  fi
  [[ "$PROBE_OUT" == PONG ]]
}

wait_redis() { # url external(0/1) [pid]
  local url=$1 external=$2 pid=${3:-} deadline=$((SECONDS + REDIS_WAIT_S))
  while :; do
    if redis_probe "$url"; then
      log "redis: ready at $(redis_host_port "$url" | tr ' ' ':') (PONG)"
      return 0
    fi
    if [[ -n "$pid" ]] && ! is_alive "$pid"; then
      tail_log "$REDIS_OUT"
      log "redis: redis-server (PID $pid) exited during startup; log: $REDIS_OUT"
      return 1
    fi
    if ((SECONDS >= deadline)); then
      if [[ "$external" == 1 ]]; then
        log "redis: STREAM_MONITOR_REDIS_URL did not answer PING within ${REDIS_WAIT_S}s (${PROBE_OUT:-no reply})."
        log "redis: unset STREAM_MONITOR_REDIS_URL to let scripts/services.sh start a local Redis."
      else
        tail_log "$REDIS_OUT"
        log "redis: no PONG on 127.0.0.1:$REDIS_PORT within ${REDIS_WAIT_S}s (${PROBE_OUT:-no reply}); log: $REDIS_OUT"
      fi
      return 1
    fi
    sleep 0.2
  done
}

start_redis() {
  mkdir -p "$REDIS_DIR"
  [[ -f "$REDIS_OUT" ]] && mv -f "$REDIS_OUT" "$REDIS_OUT.prev"
  log "redis: starting redis-server on 127.0.0.1:$REDIS_PORT"
  spawn redis "$REDIS_OUT" redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no \
    --dir "$REDIS_DIR" --daemonize no
}

# ---------------------------------------------------------------------------------------------- commands

port_busy_error() { # what port-var
  die "$1: 127.0.0.1:$2 is already in use by a process scripts/services.sh did not start.
    Stop it, choose another port ($3=...), or point stream-monitor at it ($4=...)."
}

cmd_up() {
  take_lock
  local started=() kafka_bs redis_url kafka_ext=0 redis_ext=0 kafka_pid="" redis_pid="" managed=()

  # Decide and check prerequisites before starting anything.
  if kafka_external; then
    kafka_ext=1
    kafka_bs="$STREAM_MONITOR_KAFKA_BOOTSTRAP"
    log "kafka: STREAM_MONITOR_KAFKA_BOOTSTRAP=$kafka_bs is set; using that broker, not starting one"
  else
    kafka_bs="$LOCAL_KAFKA_BOOTSTRAP"
    managed+=(kafka)
    if kafka_pid="$(owned_pid kafka)"; then
      grep -qxF "listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT" \
        "$KAFKA_PROPS" ||
        die "kafka: our broker (PID $kafka_pid) is running with other ports ($(grep '^listeners=' "$KAFKA_PROPS"));
    run 'scripts/services.sh down' first to restart it on $KAFKA_PORT/$KAFKA_CONTROLLER_PORT"
      log "kafka: already running (PID $kafka_pid), reusing it"
    else
      kafka_pid=""
      rm -f "$SERVICES_DIR/kafka.pid"
      tcp_open 127.0.0.1 "$KAFKA_PORT" &&
        port_busy_error kafka "$KAFKA_PORT" SM_KAFKA_PORT STREAM_MONITOR_KAFKA_BOOTSTRAP
      tcp_open 127.0.0.1 "$KAFKA_CONTROLLER_PORT" &&
        port_busy_error "kafka controller" "$KAFKA_CONTROLLER_PORT" SM_KAFKA_CONTROLLER_PORT \
          STREAM_MONITOR_KAFKA_BOOTSTRAP
      check_java
      ensure_kafka_libs
    fi
  fi
  if redis_external; then
    redis_ext=1
    redis_url="$STREAM_MONITOR_REDIS_URL"
    log "redis: STREAM_MONITOR_REDIS_URL is set; using that server, not starting one"
  else
    redis_url="$LOCAL_REDIS_URL"
    managed+=(redis)
    if redis_pid="$(owned_pid redis)"; then
      [[ "$(cmdline_of "$redis_pid")" == *":$REDIS_PORT "* ]] ||
        die "redis: our redis-server (PID $redis_pid) is running on another port ($(show_cmdline "$redis_pid"));
    run 'scripts/services.sh down' first to restart it on $REDIS_PORT"
      log "redis: already running (PID $redis_pid), reusing it"
    else
      redis_pid=""
      rm -f "$SERVICES_DIR/redis.pid"
      tcp_open 127.0.0.1 "$REDIS_PORT" &&
        port_busy_error redis "$REDIS_PORT" SM_REDIS_PORT STREAM_MONITOR_REDIS_URL
      ensure_redis_server
    fi
  fi

  # Start what is missing (Kafka first: it is the slow one), then wait for both.
  if [[ "$kafka_ext" == 0 && -z "$kafka_pid" ]]; then
    write_kafka_config
    start_kafka
    kafka_pid="$(head -n 1 "$SERVICES_DIR/kafka.pid")"
    started+=(kafka)
  fi
  if [[ "$redis_ext" == 0 && -z "$redis_pid" ]]; then
    start_redis
    redis_pid="$(head -n 1 "$SERVICES_DIR/redis.pid")"
    started+=(redis)
  fi

  local ok=1
  wait_redis "$redis_url" "$redis_ext" "$redis_pid" || ok=0
  if [[ "$ok" == 1 ]]; then
    wait_kafka "$kafka_bs" "$kafka_ext" "$kafka_pid" || ok=0
  fi
  if [[ "$ok" == 0 ]]; then
    local name
    for name in ${started[@]+"${started[@]}"}; do
      stop_service "$name" || true
    done
    rm -f "$ENV_FILE"
    die "services did not come up (see above)"
  fi

  local tmp="$ENV_FILE.tmp"
  (
    umask 077
    {
      printf '# written by scripts/services.sh up (%s); source it: . .services/env\n' "$(date '+%Y-%m-%d %H:%M:%S')"
      printf 'export STREAM_MONITOR_KAFKA_BOOTSTRAP=%q\n' "$kafka_bs"
      printf 'export STREAM_MONITOR_REDIS_URL=%q\n' "$redis_url"
      printf "export SM_SERVICES_MANAGED='%s'\n" "${managed[*]+"${managed[*]}"}"
    } >"$tmp"
  )
  mv -f "$tmp" "$ENV_FILE"
  log "up: Kafka $kafka_bs, Redis $(redis_host_port "$redis_url" | tr ' ' ':'); environment in $ENV_FILE"
}

cmd_down() {
  take_lock
  stop_service redis
  stop_service kafka
  rm -f "$ENV_FILE"
}

cmd_status() {
  local rc=0 pid
  if pid="$(owned_pid kafka)"; then
    if kafka_probe "$LOCAL_KAFKA_BOOTSTRAP" 0; then
      echo "kafka: running, PID $pid, $LOCAL_KAFKA_BOOTSTRAP, answers ($PROBE_OUT)"
    else
      echo "kafka: running, PID $pid, $LOCAL_KAFKA_BOOTSTRAP, NOT answering ($PROBE_OUT)"
      rc=3
    fi
  elif kafka_external; then
    if kafka_probe "$STREAM_MONITOR_KAFKA_BOOTSTRAP" 1; then
      echo "kafka: external $STREAM_MONITOR_KAFKA_BOOTSTRAP, answers ($PROBE_OUT)"
    else
      echo "kafka: external $STREAM_MONITOR_KAFKA_BOOTSTRAP, NOT answering ($PROBE_OUT)"
      rc=3
    fi
  else
    echo "kafka: not running"
    rc=3
  fi
  if pid="$(owned_pid redis)"; then
    if redis_probe "$LOCAL_REDIS_URL"; then
      echo "redis: running, PID $pid, 127.0.0.1:$REDIS_PORT, answers (PONG)"
    else
      echo "redis: running, PID $pid, 127.0.0.1:$REDIS_PORT, NOT answering (${PROBE_OUT:-no reply})"
      rc=3
    fi
  elif redis_external; then
    if redis_probe "$STREAM_MONITOR_REDIS_URL"; then
      echo "redis: external $(redis_host_port "$STREAM_MONITOR_REDIS_URL" | tr ' ' ':'), answers (PONG)"
    else
      echo "redis: external $(redis_host_port "$STREAM_MONITOR_REDIS_URL" | tr ' ' ':'), NOT answering"
      rc=3
    fi
  else
    echo "redis: not running"
    rc=3
  fi
  if [[ -f "$ENV_FILE" ]]; then
    echo "env: $ENV_FILE"
  else
    echo "env: no $ENV_FILE (run scripts/services.sh up)"
  fi
  return "$rc"
}

cmd_env() {
  [[ -f "$ENV_FILE" ]] || die "no $ENV_FILE: run scripts/services.sh up first"
  cat "$ENV_FILE"
}

# What `up` would download or install before starting anything, one line each (nothing when all is
# there). Sizes: `du -sh` of the jar cache and of ~/.m2 after a first fetch; `apt-cache show redis-server
# redis-tools libjemalloc2 liblzf1` (Size, Installed-Size); Debian 12, 2026-12-04.
cmd_plan() {
  if ! kafka_external && [[ -z "${KAFKA_HOME:-}" ]] &&
    [[ ! -f "$CACHE_DIR/kafka-$KAFKA_VERSION/libs/kafka_$SCALA_VERSION-$KAFKA_VERSION.jar" ]]; then
    echo "install: Kafka $KAFKA_VERSION jars, fetched with mvn into $CACHE_DIR/kafka-$KAFKA_VERSION/libs (~43 MB, plus ~56 MB in Maven's ~/.m2); KAFKA_HOME or STREAM_MONITOR_KAFKA_BOOTSTRAP avoids it"
  fi
  if ! redis_external && ! command -v redis-server >/dev/null 2>&1; then
    echo "install: redis-server, Debian's package, system-wide with apt-get (~1.4 MB download, ~7 MB on disk; the package also starts Debian's own Redis on 127.0.0.1:6379, which the tests do not use)"
  fi
}

usage() {
  sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  env) cmd_env ;;
  plan) cmd_plan ;;
  -h | --help | help) usage ;;
  *)
    usage >&2
    exit 2
    ;;
esac
