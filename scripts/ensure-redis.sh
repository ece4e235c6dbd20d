#!/usr/bin/env bash
# Starts a throwaway redis-server on loopback when none answers (integration tests need one).
set -euo pipefail
port=${REDIS_PORT:-6379}
if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
  echo "redis: one answers on 127.0.0.1:$port"
  exit 0
fi
if ! command -v redis-server >/dev/null; then
  echo "redis: none answers on 127.0.0.1:$port and redis-server is not installed;" \
       "install it (Debian: apt-get install redis-server) or start one" >&2
  exit 1
fi
redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
  --dir "${TMPDIR:-/tmp}" --logfile "${TMPDIR:-/tmp}/privevo-redis.log"
for _ in $(seq 50); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && { echo "redis: started on 127.0.0.1:$port"; exit 0; }
  sleep 0.1
done
echo "redis: started but does not answer on 127.0.0.1:$port; see ${TMPDIR:-/tmp}/privevo-redis.log" >&2
exit 1
