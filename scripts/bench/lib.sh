# Sourced by the bench scripts (run, spooled-ab, auth-ab): waiting for a port, tansu in memory
# on 127.0.0.1:$KPORT with the topic `bench` (4 partitions), and waiting for a gateway to be
# ready. The caller sets OUT (the scratch directory) and KPORT; start_tansu sets TANSU_PID.

wait_port() { # host port (WAIT_PORT_TRIES x 50 ms, 10 s unless set)
  for _ in $(seq 1 "${WAIT_PORT_TRIES:-200}"); do
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "port $2 never opened" >&2
  return 1
}

# TANSU_WRAP (an array, may be unset): a command to run tansu under, e.g. valgrind.
start_tansu() {
  rm -rf "$OUT/tansu" && mkdir -p "$OUT/tansu"
  local wrap=("${TANSU_WRAP[@]}")
  (cd "$OUT/tansu" && exec env -u STORAGE_ENGINE -u LISTENER_URL -u ADVERTISED_LISTENER_URL \
    "${wrap[@]}" "$(command -v tansu)" broker --storage-engine memory://tansu/ \
      --listener-url "tcp://127.0.0.1:$KPORT" --advertised-listener-url "tcp://127.0.0.1:$KPORT" \
      --cluster-id bench) >"$OUT/tansu.log" 2>&1 &
  TANSU_PID=$!
  wait_port 127.0.0.1 "$KPORT"
  tansu topic create bench --partitions 4 --broker "tcp://127.0.0.1:$KPORT" >/dev/null
}

stop_tansu() { kill -9 "$TANSU_PID" 2>/dev/null || true; wait "$TANSU_PID" 2>/dev/null || true; TANSU_PID=""; }

wait_ready() { # base-url log-file
  for _ in $(seq 1 300); do
    [ "$(curl -sk -o /dev/null -w '%{http_code}' "$1/health/ready")" = 200 ] && return 0
    sleep 0.05
  done
  echo "gateway never became ready; see $2" >&2
  return 1
}
