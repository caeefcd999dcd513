#!/usr/bin/env bash
# Make sure Postgres, Redis and RabbitMQ answer on loopback. On machines where they already run
# (CI here) this only checks; on a fresh Debian/Ubuntu machine it installs and starts them.
#   hack/services.sh            ensure all three
source "$(dirname "$0")/lib.sh"

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

ensure_postgres() {
  if port_open 5432 && psql -h 127.0.0.1 -U postgres -d postgres -Atc 'select 1' >/dev/null 2>&1; then return 0; fi
  apt_install postgresql postgresql-client
  local ver; ver=$(ls /etc/postgresql | sort -V | tail -n1)
  local hba="/etc/postgresql/$ver/main/pg_hba.conf"
  # Tests connect as postgres over loopback without a password, like the CI machines do.
  if ! grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
    as_root sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
  fi
  as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main restart || as_root pg_ctlcluster "$ver" main start
  wait_for postgres 60 psql -h 127.0.0.1 -U postgres -d postgres -Atc 'select 1'
}

ensure_redis() {
  if port_open 6379 && redis-cli -h 127.0.0.1 ping >/dev/null 2>&1; then return 0; fi
  apt_install redis-server
  as_root mkdir -p /var/lib/redis /var/log/redis
  as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/kube-beat.log
  wait_for redis 30 redis-cli -h 127.0.0.1 ping
}

ensure_rabbitmq() {
  if port_open 5672; then return 0; fi
  apt_install rabbitmq-server
  as_root rabbitmq-server -detached || true
  wait_for rabbitmq 120 port_open 5672
}

ensure_postgres
ensure_redis
ensure_rabbitmq
log "postgres, redis and rabbitmq are up"
