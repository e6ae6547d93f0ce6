#!/usr/bin/env bash
# The local run-time stack of the customer data platform, as plain processes.
#
#   scripts/stack.sh install   install what is missing (uv, the Python workspace,
#                              Prometheus, docker-compose, the Kafka broker jars)
#   scripts/stack.sh infra     install, then start Kafka and PostgreSQL
#   scripts/stack.sh up        infra, then Prometheus, the mail catcher and the five
#                              services; writes .run/dev.env and prints the URLs
#   scripts/stack.sh down      stop everything up/infra started
#   scripts/stack.sh status    what runs, and the readiness of each service
#   scripts/stack.sh env-keys SERVICE
#                              the environment variable names a service is given
#   scripts/stack.sh uv ARGS...
#                              run uv (installed first when missing)
#
# Every subcommand is idempotent. State lives under .run/ (logs in .run/logs,
# pid files in .run/pids, caught mail in .run/mail, a link to a folder in /dev/shm).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUN="$ROOT/.run"
LOGS="$RUN/logs"
PIDS="$RUN/pids"
DEV_ENV="$RUN/dev.env"
SECRETS_ENV="$RUN/secrets.env"
VENV_PY="$ROOT/.venv/bin/python"

UV_VERSION="0.13.8"

KAFKA_PORT="${CDP_KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${CDP_KAFKA_CONTROLLER_PORT:-9093}"
KAFKA_HEAP="${CDP_KAFKA_HEAP:-512m}"
KAFKA_READY_TIMEOUT="${CDP_KAFKA_READY_TIMEOUT:-90}"
KAFKA_DIR="$RUN/kafka"
KAFKA_LIBS="$KAFKA_DIR/libs"
KAFKA_DATA="$KAFKA_DIR/data"
KAFKA_POM="$ROOT/deploy/local/kafka/pom.xml"

PG_VERSION="${CDP_PG_VERSION:-15}"
PG_CLUSTER="${CDP_PG_CLUSTER:-main}"
PG_PORT="${CDP_PG_PORT:-5432}"
PG_USER="cdp"
PG_PASSWORD="cdp"
PG_DATABASE="cdp_dev"

PROMETHEUS_PORT="${CDP_PROMETHEUS_PORT:-9090}"
SMTP_PORT="${CDP_SMTP_PORT:-1025}"
SERVICE_READY_TIMEOUT="${CDP_SERVICE_READY_TIMEOUT:-180}"

# The five services, in start order, and their ports (see ARCHITECTURE.md).
SERVICES=(ingest profile segment campaign consent)
declare -A SERVICE_PORTS=([ingest]=8001 [profile]=8002 [segment]=8003 [campaign]=8004 [consent]=8005)

# Exactly the keys of .run/dev.env, in order.
DEV_ENV_KEYS=(
  CDP_ADMIN_TOKEN CDP_WRITE_KEY
  CDP_INGEST_URL CDP_PROFILE_URL CDP_SEGMENT_URL CDP_CAMPAIGN_URL CDP_CONSENT_URL
  CDP_KAFKA_BOOTSTRAP CDP_DATABASE_URL CDP_PROMETHEUS_URL CDP_SMTP_URL
)
# The keys of .run/secrets.env (generated once, reused).
SECRET_KEYS=(CDP_ADMIN_TOKEN CDP_WRITE_KEY CDP_HASH_KEY)
# Keys every service gets on top of dev.env and secrets.env; each service also
# gets CDP_<NAME>_PORT.
SERVICE_EXTRA_KEYS=(CDP_ENV CDP_DEFAULT_WRITE_KEY)
SERVICE_CDP_ENV="dev"

# Every process this script starts carries this variable; `down` and `status`
# find leftovers by it.
MARKER="CDP_STACK_DIR=$RUN"

# ---------------------------------------------------------------- helpers

log() { printf '==> %s\n' "$*"; }
info() { printf '    %s\n' "$*"; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}

have() { command -v "$1" >/dev/null 2>&1; }

as_root() {
  if [[ $EUID -eq 0 ]]; then
    "$@"
  elif have sudo; then
    sudo "$@"
  else
    die "need root for: $*"
  fi
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

port_owner() {
  if have ss; then
    ss -Hltnp "sport = :$1" 2>/dev/null | sed -n 's/.*users:(\(.*\))$/\1/p' | head -n 1
  fi
}

random_hex() {
  if have openssl; then
    openssl rand -hex "$1"
  else
    python3 -c "import secrets, sys; print(secrets.token_hex(int(sys.argv[1])))" "$1"
  fi
}

http_ok() {
  # http_ok URL: true when URL answers 200 within 3 seconds.
  local code
  code="$(curl -s -o /dev/null -m 3 -w '%{http_code}' "$1" 2>/dev/null)" || true
  [[ "$code" == 200 ]]
}

pid_of() {
  local file="$PIDS/$1.pid"
  [[ -s "$file" ]] && tr -dc '0-9' <"$file"
}

# running NAME PATTERN: the process recorded in .run/pids/NAME.pid is alive and
# its command line contains PATTERN (guards against a reused pid).
running() {
  local pid
  pid="$(pid_of "$1")" || return 1
  [[ -n "$pid" && -r "/proc/$pid/cmdline" ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$2"
}

rotate_log() {
  [[ -s "$1" ]] && mv -f "$1" "$1.1"
  : >"$1"
}

# start_bg NAME PATTERN CMD...: start CMD detached from this shell (own session,
# so it survives it), stdout and stderr to .run/logs/NAME.log, pid to
# .run/pids/NAME.pid; returns once the process runs CMD (its command line
# contains PATTERN) or has exited.
start_bg() {
  local name="$1" pattern="$2" pidfile="$PIDS/$1.pid" logfile="$LOGS/$1.log"
  shift 2
  mkdir -p "$PIDS" "$LOGS"
  rm -f "$pidfile"
  rotate_log "$logfile"
  # shellcheck disable=SC2016
  env "$MARKER" setsid bash -c 'echo $$ >"$0"; exec "$@"' "$pidfile" "$@" \
    >>"$logfile" 2>&1 </dev/null &
  local i pid=""
  for ((i = 0; i < 100; i++)); do
    if [[ -z "$pid" && -s "$pidfile" ]]; then
      pid="$(tr -dc '0-9' <"$pidfile")"
    fi
    if [[ -n "$pid" ]]; then
      running "$name" "$pattern" && return 0
      kill -0 "$pid" 2>/dev/null || return 0
    fi
    sleep 0.05
  done
  die "$name did not start (see $logfile)"
}

tail_log() {
  local file="$LOGS/$1.log"
  if [[ -f "$file" ]]; then
    printf -- '---- last lines of %s ----\n' "$file" >&2
    tail -n "${2:-40}" "$file" >&2
    printf -- '----\n' >&2
  fi
}

# group_alive PGID: any live (not zombie) process left in the process group.
group_alive() {
  local pids
  pids="$(pgrep -g "$1" 2>/dev/null | paste -sd, -)" || return 1
  [[ -n "$pids" ]] || return 1
  ps -o stat= -p "$pids" 2>/dev/null | grep -qv '^Z'
}

# stop_proc NAME PATTERN TIMEOUT [quiet]: SIGTERM the process group, wait up to
# TIMEOUT seconds, then SIGKILL it.
stop_proc() {
  local name="$1" pattern="$2" timeout="$3" quiet="${4:-}" pid i
  pid="$(pid_of "$name")" || true
  if [[ -z "$pid" ]]; then
    rm -f "$PIDS/$name.pid"
    return 0
  fi
  if running "$name" "$pattern"; then
    [[ -n "$quiet" ]] || log "stopping $name (pid $pid)"
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < timeout * 10; i++)); do
      group_alive "$pid" || break
      sleep 0.1
    done
    if group_alive "$pid"; then
      warn "$name did not stop within ${timeout}s, killing it"
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
      for ((i = 0; i < 50; i++)); do
        group_alive "$pid" || break
        sleep 0.1
      done
    fi
  fi
  rm -f "$PIDS/$name.pid"
}

# marked_pids: every live process that carries this stack's marker.
marked_pids() {
  local dir pid
  for dir in /proc/[0-9]*; do
    pid="${dir#/proc/}"
    [[ "$pid" == "$$" || "$pid" == "$BASHPID" ]] && continue
    grep -qzxF -- "$MARKER" "$dir/environ" 2>/dev/null && echo "$pid"
  done
  return 0
}

# ---------------------------------------------------------------- install

UV_BIN=""

find_uv() {
  if have uv; then
    UV_BIN="$(command -v uv)"
  elif python3 -c "import uv" >/dev/null 2>&1; then
    UV_BIN="$(python3 -c 'import uv; print(uv.find_uv_bin())')"
  else
    return 1
  fi
}

install_uv() {
  if find_uv; then
    return 0
  fi
  log "installing uv $UV_VERSION"
  python3 -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION" ||
    python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "uv==$UV_VERSION"
  if have pyenv; then pyenv rehash || true; fi
  find_uv || die "uv was installed but cannot be found"
}

sync_workspace() {
  if [[ "${CDP_SKIP_SYNC:-0}" == 1 && -x "$VENV_PY" ]]; then
    return 0
  fi
  log "syncing the Python workspace (.venv)"
  (cd "$ROOT" && "$UV_BIN" sync --all-packages --frozen --quiet)
}

install_apt_packages() {
  local missing=()
  have prometheus || missing+=(prometheus)
  have docker-compose || missing+=(docker-compose)
  have java || missing+=(openjdk-17-jre-headless)
  have mvn || missing+=(maven)
  have curl || missing+=(curl)
  have pgrep || missing+=(procps)
  have ss || missing+=(iproute2)
  # The ingest tests drive the official JavaScript clients and analytics.js in Chromium.
  have node || missing+=(nodejs)
  have npm || missing+=(npm)
  [[ -x /usr/bin/chromium ]] || missing+=(chromium)
  if ! have pg_ctlcluster || [[ ! -x "/usr/lib/postgresql/$PG_VERSION/bin/postgres" ]]; then
    missing+=("postgresql-$PG_VERSION" postgresql-client-common)
  fi
  if ((${#missing[@]} == 0)); then
    return 0
  fi
  log "installing Debian packages: ${missing[*]}"
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
  # The Debian package may have started its own Prometheus on our port.
  if [[ " ${missing[*]} " == *" prometheus "* && -s /run/prometheus/prometheus.pid ]]; then
    as_root /etc/init.d/prometheus stop >/dev/null 2>&1 || true
  fi
}

kafka_libs_stamp() { sha256sum "$KAFKA_POM" | cut -d' ' -f1; }

install_kafka() {
  local stamp
  stamp="$(kafka_libs_stamp)"
  if [[ -f "$KAFKA_LIBS/.complete" && "$(cat "$KAFKA_LIBS/.complete")" == "$stamp" ]]; then
    return 0
  fi
  log "fetching the Kafka broker jars from Maven Central"
  rm -rf "$KAFKA_LIBS"
  mkdir -p "$KAFKA_LIBS"
  if ! mvn -B -q -f "$KAFKA_POM" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$KAFKA_LIBS" >"$LOGS/kafka-fetch.log" 2>&1; then
    tail_log kafka-fetch 40
    die "fetching the Kafka jars failed"
  fi
  ls "$KAFKA_LIBS"/kafka_2.13-*.jar >/dev/null 2>&1 || die "the Kafka jars are missing from $KAFKA_LIBS"
  echo "$stamp" >"$KAFKA_LIBS/.complete"
}

cmd_install() {
  mkdir -p "$RUN" "$LOGS" "$PIDS"
  install_apt_packages
  install_uv
  sync_workspace
  install_kafka
}

# ---------------------------------------------------------------- PostgreSQL

pg_online() {
  pg_lsclusters -h "$PG_VERSION" "$PG_CLUSTER" 2>/dev/null | awk '{print $4}' | grep -q '^online'
}

pg_psql() {
  (cd / && as_root runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -p "$PG_PORT" "$@")
}

start_postgres() {
  if [[ -z "$(pg_lsclusters -h "$PG_VERSION" "$PG_CLUSTER" 2>/dev/null)" ]]; then
    log "creating PostgreSQL cluster $PG_VERSION/$PG_CLUSTER"
    as_root pg_createcluster "$PG_VERSION" "$PG_CLUSTER" -p "$PG_PORT"
  fi
  local conf_port
  conf_port="$(pg_lsclusters -h "$PG_VERSION" "$PG_CLUSTER" | awk '{print $3}')"
  if [[ "$conf_port" != "$PG_PORT" ]]; then
    die "PostgreSQL $PG_VERSION/$PG_CLUSTER is configured for port $conf_port, not $PG_PORT; run: pg_conftool $PG_VERSION $PG_CLUSTER set port $PG_PORT (or set CDP_PG_PORT=$conf_port)"
  fi
  local settings="/etc/postgresql/$PG_VERSION/$PG_CLUSTER/conf.d/cdp.conf"
  if ! cmp -s "$ROOT/deploy/local/postgresql.conf" "$settings"; then
    as_root install -m 0644 "$ROOT/deploy/local/postgresql.conf" "$settings"
    if pg_online; then
      # Reloadable settings apply now; shared_buffers at the next start.
      info "PostgreSQL settings changed; shared_buffers and max_connections apply once PostgreSQL restarts (make down && make up)"
      as_root pg_ctlcluster --skip-systemctl-redirect "$PG_VERSION" "$PG_CLUSTER" reload
    fi
  fi
  if pg_online; then
    info "PostgreSQL $PG_VERSION/$PG_CLUSTER already running"
  else
    log "starting PostgreSQL $PG_VERSION/$PG_CLUSTER"
    as_root pg_ctlcluster --skip-systemctl-redirect "$PG_VERSION" "$PG_CLUSTER" start
  fi
  local i
  for ((i = 0; i < 300; i++)); do
    pg_isready -q -h 127.0.0.1 -p "$PG_PORT" && break
    sleep 0.1
  done
  pg_isready -q -h 127.0.0.1 -p "$PG_PORT" ||
    die "PostgreSQL does not answer on 127.0.0.1:$PG_PORT (see /var/log/postgresql/postgresql-$PG_VERSION-$PG_CLUSTER.log)"
  pg_psql -d postgres <<SQL
DO \$\$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_USER') THEN
    CREATE ROLE $PG_USER LOGIN CREATEDB PASSWORD '$PG_PASSWORD';
  ELSE
    ALTER ROLE $PG_USER LOGIN CREATEDB PASSWORD '$PG_PASSWORD';
  END IF;
END
\$\$;
SQL
  if [[ -z "$(pg_psql -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$PG_DATABASE'")" ]]; then
    pg_psql -d postgres -c "CREATE DATABASE $PG_DATABASE OWNER $PG_USER"
  fi
  info "PostgreSQL ready at 127.0.0.1:$PG_PORT (database $PG_DATABASE, role $PG_USER)"
}

stop_postgres() {
  if have pg_ctlcluster && pg_online; then
    log "stopping PostgreSQL $PG_VERSION/$PG_CLUSTER"
    as_root pg_ctlcluster --skip-systemctl-redirect "$PG_VERSION" "$PG_CLUSTER" stop
  fi
}

# ---------------------------------------------------------------- Kafka

KAFKA_PATTERN="kafka.Kafka $KAFKA_DIR/server.properties"

KAFKA_JAVA=(
  java -Xms"$KAFKA_HEAP" -Xmx"$KAFKA_HEAP" -XX:+UseSerialGC -XX:+ExitOnOutOfMemoryError
  -Djava.awt.headless=true -Djava.net.preferIPv4Stack=true
  -Dkafka.logs.dir="$LOGS"
  -Dlog4j.configuration="file:$ROOT/deploy/local/kafka/log4j.properties"
  -cp "$KAFKA_LIBS/*"
)

kafka_java() { "${KAFKA_JAVA[@]}" "$@"; }

write_kafka_config() {
  mkdir -p "$KAFKA_DATA"
  sed -e "s|@KAFKA_PORT@|$KAFKA_PORT|g" \
    -e "s|@KAFKA_CONTROLLER_PORT@|$KAFKA_CONTROLLER_PORT|g" \
    -e "s|@KAFKA_DATA@|$KAFKA_DATA|g" \
    "$ROOT/deploy/local/kafka/server.properties" >"$KAFKA_DIR/server.properties.tmp"
  mv -f "$KAFKA_DIR/server.properties.tmp" "$KAFKA_DIR/server.properties"
}

format_kafka() {
  [[ -f "$KAFKA_DATA/meta.properties" ]] && return 0
  if [[ ! -s "$KAFKA_DIR/cluster.id" ]]; then
    kafka_java kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1 | tr -d '[:space:]' >"$KAFKA_DIR/cluster.id"
    [[ -s "$KAFKA_DIR/cluster.id" ]] || die "could not generate a Kafka cluster id"
  fi
  log "formatting the Kafka storage (cluster id $(cat "$KAFKA_DIR/cluster.id"))"
  kafka_java kafka.tools.StorageTool format -t "$(cat "$KAFKA_DIR/cluster.id")" \
    -c "$KAFKA_DIR/server.properties" --ignore-formatted >>"$LOGS/kafka-format.log" 2>&1 ||
    {
      tail -n 20 "$LOGS/kafka-format.log" >&2
      die "formatting the Kafka storage failed"
    }
}

# start_kafka: launch the broker (does not wait; see wait_kafka).
start_kafka() {
  if running kafka "$KAFKA_PATTERN"; then
    info "Kafka already running (pid $(pid_of kafka))"
    return 0
  fi
  if port_open "$KAFKA_PORT" || port_open "$KAFKA_CONTROLLER_PORT"; then
    die "port $KAFKA_PORT or $KAFKA_CONTROLLER_PORT is taken by another process ($(port_owner "$KAFKA_PORT")$(port_owner "$KAFKA_CONTROLLER_PORT")); stop it or set CDP_KAFKA_PORT/CDP_KAFKA_CONTROLLER_PORT"
  fi
  have java || die "java is missing (run scripts/stack.sh install)"
  write_kafka_config
  format_kafka
  log "starting Kafka on 127.0.0.1:$KAFKA_PORT"
  KAFKA_STARTED_AT=$SECONDS
  start_bg kafka "$KAFKA_PATTERN" "${KAFKA_JAVA[@]}" kafka.Kafka "$KAFKA_DIR/server.properties"
}

wait_kafka() {
  local deadline=$((SECONDS + KAFKA_READY_TIMEOUT))
  while ((SECONDS < deadline)); do
    if ! running kafka "$KAFKA_PATTERN"; then
      tail_log kafka 60
      die "Kafka exited during start-up"
    fi
    if port_open "$KAFKA_PORT" && grep -q 'Kafka Server started' "$LOGS/kafka.log"; then
      if [[ -n "${KAFKA_STARTED_AT:-}" ]]; then
        info "Kafka ready at 127.0.0.1:$KAFKA_PORT after $((SECONDS - KAFKA_STARTED_AT))s"
      else
        info "Kafka ready at 127.0.0.1:$KAFKA_PORT"
      fi
      return 0
    fi
    sleep 0.5
  done
  tail_log kafka 60
  die "Kafka was not ready within ${KAFKA_READY_TIMEOUT}s"
}

# ---------------------------------------------------------------- credentials

ensure_secrets() {
  mkdir -p "$RUN"
  local key
  if [[ -f "$SECRETS_ENV" ]]; then
    local ok=1
    for key in "${SECRET_KEYS[@]}"; do
      grep -q "^$key=." "$SECRETS_ENV" || ok=0
    done
    ((ok)) && return 0
  fi
  log "generating credentials in .run/secrets.env"
  (
    umask 077
    {
      echo "CDP_ADMIN_TOKEN=cdp_admin_$(random_hex 24)"
      echo "CDP_WRITE_KEY=wk_$(random_hex 24)"
      echo "CDP_HASH_KEY=$(random_hex 32)"
    } >"$SECRETS_ENV.tmp"
    mv -f "$SECRETS_ENV.tmp" "$SECRETS_ENV"
  )
}

env_value() {
  # env_value FILE KEY
  sed -n "s/^$2=//p" "$1" | tail -n 1
}

write_dev_env() {
  ensure_secrets
  local tmp="$DEV_ENV.tmp" name upper
  {
    echo "CDP_ADMIN_TOKEN=$(env_value "$SECRETS_ENV" CDP_ADMIN_TOKEN)"
    echo "CDP_WRITE_KEY=$(env_value "$SECRETS_ENV" CDP_WRITE_KEY)"
    for name in "${SERVICES[@]}"; do
      upper="${name^^}"
      echo "CDP_${upper}_URL=http://127.0.0.1:${SERVICE_PORTS[$name]}"
    done
    echo "CDP_KAFKA_BOOTSTRAP=127.0.0.1:$KAFKA_PORT"
    echo "CDP_DATABASE_URL=postgresql://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_DATABASE"
    echo "CDP_PROMETHEUS_URL=http://127.0.0.1:$PROMETHEUS_PORT"
    echo "CDP_SMTP_URL=smtp://127.0.0.1:$SMTP_PORT"
  } >"$tmp"
  chmod 600 "$tmp"
  mv -f "$tmp" "$DEV_ENV"
}

# service_env_keys NAME: the variable names service NAME is given.
service_env_keys() {
  local key
  {
    for key in "${DEV_ENV_KEYS[@]}" "${SECRET_KEYS[@]}" "${SERVICE_EXTRA_KEYS[@]}"; do
      echo "$key"
    done
    echo "CDP_${1^^}_PORT"
  } | awk '!seen[$0]++'
}

# service_env NAME: KEY=value lines for service NAME (dev.env, secrets.env, extras).
service_env() {
  local name="$1"
  cat "$DEV_ENV" "$SECRETS_ENV"
  echo "CDP_ENV=$SERVICE_CDP_ENV"
  echo "CDP_DEFAULT_WRITE_KEY=$(env_value "$SECRETS_ENV" CDP_WRITE_KEY)"
  echo "CDP_${name^^}_PORT=${SERVICE_PORTS[$name]}"
}

# ---------------------------------------------------------------- Prometheus

PROMETHEUS_PATTERN="--config.file=$RUN/prometheus/prometheus.yml"

start_prometheus() {
  if running prometheus "$PROMETHEUS_PATTERN"; then
    info "Prometheus already running (pid $(pid_of prometheus))"
    return 0
  fi
  if port_open "$PROMETHEUS_PORT"; then
    die "port $PROMETHEUS_PORT is taken by another process ($(port_owner "$PROMETHEUS_PORT")); stop it or set CDP_PROMETHEUS_PORT"
  fi
  have prometheus || die "prometheus is missing (run scripts/stack.sh install)"
  mkdir -p "$RUN/prometheus/data"
  sed -e "s|127.0.0.1:9090|127.0.0.1:$PROMETHEUS_PORT|g" \
    "$ROOT/deploy/prometheus/prometheus.yml" >"$RUN/prometheus/prometheus.yml"
  cp -f "$ROOT/deploy/prometheus/alerts.yml" "$RUN/prometheus/alerts.yml"
  log "starting Prometheus on 127.0.0.1:$PROMETHEUS_PORT"
  start_bg prometheus "$PROMETHEUS_PATTERN" prometheus "$PROMETHEUS_PATTERN" \
    --storage.tsdb.path="$RUN/prometheus/data" \
    --storage.tsdb.retention.time=7d \
    --web.listen-address="127.0.0.1:$PROMETHEUS_PORT"
  local deadline=$((SECONDS + 60))
  while ((SECONDS < deadline)); do
    running prometheus "$PROMETHEUS_PATTERN" || {
      tail_log prometheus
      die "Prometheus exited during start-up"
    }
    http_ok "http://127.0.0.1:$PROMETHEUS_PORT/-/ready" && return 0
    sleep 0.3
  done
  tail_log prometheus
  die "Prometheus was not ready within 60s"
}

# ---------------------------------------------------------------- mail catcher

MAIL_PATTERN="$ROOT/deploy/local/mailcatcher.py"
MAIL_KEEP="${CDP_MAIL_KEEP:-10000}"

# Caught mail is kept in memory (/dev/shm) when there is one, as mail catchers do: creating a file
# on a disk costs far more than the SMTP exchange itself. .run/mail links to it; CDP_MAIL_DIR
# chooses another folder.
mail_store() {
  if [[ -n "${CDP_MAIL_DIR:-}" ]]; then
    echo "$CDP_MAIL_DIR"
  elif [[ -d /dev/shm && -w /dev/shm ]]; then
    echo "/dev/shm/cdp-mail-$(id -u)-$(printf '%s' "$ROOT" | cksum | cut -d' ' -f1)"
  else
    echo "$RUN/mail"
  fi
}

link_mail_dir() {
  local store="$1"
  mkdir -p "$store"
  [[ "$store" == "$RUN/mail" ]] && return 0
  if [[ -d "$RUN/mail" && ! -L "$RUN/mail" ]]; then
    # Mail caught before the store moved: keep it in the store.
    find "$RUN/mail" -maxdepth 1 -name '*.eml' -exec mv -t "$store" {} +
    rmdir "$RUN/mail" 2>/dev/null || mv "$RUN/mail" "$RUN/mail.old.$$"
  fi
  ln -sfn "$store" "$RUN/mail"
}

start_mailcatcher() {
  if running mailcatcher "$MAIL_PATTERN"; then
    info "mail catcher already running (pid $(pid_of mailcatcher))"
    return 0
  fi
  if port_open "$SMTP_PORT"; then
    die "port $SMTP_PORT is taken by another process ($(port_owner "$SMTP_PORT")); stop it or set CDP_SMTP_PORT"
  fi
  local store
  store="$(mail_store)"
  link_mail_dir "$store"
  log "starting the mail catcher on 127.0.0.1:$SMTP_PORT (mail to .run/mail/ -> $store, newest $MAIL_KEEP kept)"
  start_bg mailcatcher "$MAIL_PATTERN" "$VENV_PY" "$MAIL_PATTERN" \
    --host 127.0.0.1 --port "$SMTP_PORT" --dir "$store" --keep "$MAIL_KEEP"
  local deadline=$((SECONDS + 30))
  while ((SECONDS < deadline)); do
    running mailcatcher "$MAIL_PATTERN" || {
      tail_log mailcatcher
      die "the mail catcher exited during start-up"
    }
    port_open "$SMTP_PORT" && return 0
    sleep 0.2
  done
  tail_log mailcatcher
  die "the mail catcher was not listening within 30s"
}

# ---------------------------------------------------------------- services

service_pattern() { echo "$VENV_PY -m cdp_$1"; }

start_service() {
  local name="$1" port="${SERVICE_PORTS[$1]}"
  if running "$name" "$(service_pattern "$name")"; then
    info "$name already running (pid $(pid_of "$name"))"
    return 0
  fi
  if port_open "$port"; then
    die "port $port ($name) is taken by another process ($(port_owner "$port"))"
  fi
  local vars=()
  mapfile -t vars < <(service_env "$name")
  log "starting $name on 127.0.0.1:$port"
  start_bg "$name" "$(service_pattern "$name")" env "${vars[@]}" "$VENV_PY" -m "cdp_$name"
}

wait_services() {
  local deadline=$((SECONDS + SERVICE_READY_TIMEOUT)) name pending
  local -A ready=()
  while :; do
    pending=0
    for name in "${SERVICES[@]}"; do
      [[ -n "${ready[$name]:-}" ]] && continue
      if ! running "$name" "$(service_pattern "$name")"; then
        tail_log "$name" 60
        die "$name exited during start-up (log: .run/logs/$name.log)"
      fi
      if http_ok "http://127.0.0.1:${SERVICE_PORTS[$name]}/readyz"; then
        ready[$name]=1
        info "$name ready"
      else
        pending=1
      fi
    done
    ((pending)) || return 0
    if ((SECONDS >= deadline)); then
      for name in "${SERVICES[@]}"; do
        if [[ -z "${ready[$name]:-}" ]]; then
          tail_log "$name" 60
          warn "$name: GET http://127.0.0.1:${SERVICE_PORTS[$name]}/readyz did not answer 200 within ${SERVICE_READY_TIMEOUT}s"
        fi
      done
      die "not every service became ready"
    fi
    sleep 0.5
  done
}

# ---------------------------------------------------------------- commands

cmd_infra() {
  cmd_install
  start_kafka
  start_postgres
  wait_kafka
}

print_summary() {
  local name
  echo
  echo "The customer data platform runs locally:"
  for name in "${SERVICES[@]}"; do
    printf '  %-10s http://127.0.0.1:%s\n' "$name" "${SERVICE_PORTS[$name]}"
  done
  printf '  %-10s http://127.0.0.1:%s\n' prometheus "$PROMETHEUS_PORT"
  printf '  %-10s 127.0.0.1:%s\n' kafka "$KAFKA_PORT"
  printf '  %-10s postgresql://%s:%s@127.0.0.1:%s/%s\n' postgresql "$PG_USER" "$PG_PASSWORD" "$PG_PORT" "$PG_DATABASE"
  printf '  %-10s smtp://127.0.0.1:%s (messages in .run/mail/)\n' mail "$SMTP_PORT"
  echo
  echo "Credentials:"
  echo "  admin token  $(env_value "$DEV_ENV" CDP_ADMIN_TOKEN)"
  echo "  write key    $(env_value "$DEV_ENV" CDP_WRITE_KEY)"
  echo
  echo "All of it is in .run/dev.env (load it with: set -a; . .run/dev.env; set +a)."
  echo "Logs are in .run/logs/. Stop everything with: make down"
}

cmd_up() {
  cmd_infra
  write_dev_env
  start_prometheus
  start_mailcatcher
  local name
  for name in "${SERVICES[@]}"; do
    start_service "$name"
  done
  wait_services
  print_summary
}

cmd_down() {
  local name
  # Ask every service to stop at once, then wait for each.
  for name in "${SERVICES[@]}"; do
    if running "$name" "$(service_pattern "$name")"; then
      log "stopping $name (pid $(pid_of "$name"))"
      kill -TERM -- "-$(pid_of "$name")" 2>/dev/null || true
    fi
  done
  for name in "${SERVICES[@]}"; do
    stop_proc "$name" "$(service_pattern "$name")" 20 quiet
  done
  stop_proc mailcatcher "$MAIL_PATTERN" 10
  stop_proc prometheus "$PROMETHEUS_PATTERN" 20
  stop_proc kafka "$KAFKA_PATTERN" 60
  stop_postgres
  rm -f "$DEV_ENV"

  # Whatever still carries this stack's marker (say, a child a crashed service
  # left behind) gets SIGTERM, then SIGKILL, by pid.
  local left pid i
  left="$(marked_pids | tr '\n' ' ')"
  left="${left% }"
  if [[ -n "$left" ]]; then
    warn "stopping leftover processes of the stack: $left"
    for pid in $left; do kill -TERM "$pid" 2>/dev/null || true; done
    for ((i = 0; i < 50; i++)); do
      [[ -z "$(marked_pids)" ]] && break
      sleep 0.1
    done
    for pid in $(marked_pids); do kill -KILL "$pid" 2>/dev/null || true; done
    sleep 0.2
  fi
  left="$(marked_pids | tr '\n' ' ')"
  left="${left% }"
  if [[ -n "$left" ]]; then
    warn "processes of the stack are still alive:"
    # shellcheck disable=SC2086
    ps -o pid=,args= -p ${left// /,} >&2 || true
    die "could not stop everything"
  fi
  if have pg_ctlcluster && pg_online; then
    die "PostgreSQL $PG_VERSION/$PG_CLUSTER is still running"
  fi
  log "the stack is stopped"
}

status_line() {
  # status_line NAME PATTERN DETAIL
  local pid
  if running "$1" "$2"; then
    pid="$(pid_of "$1")"
    printf '  %-12s running  pid %-8s %s\n' "$1" "$pid" "$3"
  else
    printf '  %-12s stopped\n' "$1"
  fi
}

cmd_status() {
  local name port state
  echo "Infrastructure:"
  status_line kafka "$KAFKA_PATTERN" "127.0.0.1:$KAFKA_PORT"
  if have pg_ctlcluster && pg_online; then
    printf '  %-12s running  %-12s %s\n' postgresql "$PG_VERSION/$PG_CLUSTER" "127.0.0.1:$PG_PORT"
  else
    printf '  %-12s stopped\n' postgresql
  fi
  status_line prometheus "$PROMETHEUS_PATTERN" "http://127.0.0.1:$PROMETHEUS_PORT"
  status_line mailcatcher "$MAIL_PATTERN" "smtp://127.0.0.1:$SMTP_PORT"
  echo "Services:"
  for name in "${SERVICES[@]}"; do
    port="${SERVICE_PORTS[$name]}"
    if running "$name" "$(service_pattern "$name")"; then
      if http_ok "http://127.0.0.1:$port/readyz"; then state=ready; else state="not ready"; fi
      printf '  %-12s running  pid %-8s http://127.0.0.1:%s  %s\n' "$name" "$(pid_of "$name")" "$port" "$state"
    else
      printf '  %-12s stopped\n' "$name"
    fi
  done
  if [[ -f "$DEV_ENV" ]]; then
    echo "Credentials and URLs: .run/dev.env"
  fi
}

cmd_env_keys() {
  local name="${1:-}"
  [[ -n "$name" && -n "${SERVICE_PORTS[$name]:-}" ]] ||
    die "usage: $0 env-keys {$(IFS="|"; echo "${SERVICES[*]}")}"
  service_env_keys "$name"
}

usage() {
  sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

main() {
  local cmd="${1:-}"
  [[ $# -gt 0 ]] && shift
  case "$cmd" in
  install) cmd_install ;;
  infra) cmd_infra ;;
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  env-keys) cmd_env_keys "$@" ;;
  uv)
    install_uv >&2
    exec "$UV_BIN" "$@"
    ;;
  -h | --help | help) usage ;;
  *)
    usage >&2
    exit 2
    ;;
  esac
}

main "$@"
