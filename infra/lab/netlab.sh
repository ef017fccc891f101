#!/usr/bin/env bash
# Two-host lab on one machine: network namespaces LAB (ketter-lab) and REMOTE
# (ketter-remote) joined twice: a veth pair rate-limited with tc tbf (the LAN, no
# delay), and a long link of two TUN devices fed by infra/lab/delay_line.py, which
# serialises each packet at LAB_RATE, queues it and delivers it RTT/2 later (our
# kernel has neither sch_netem nor sch_fq, so the delay is added per packet in user
# space; TCP on both hosts sees the real RTT).
#
#   infra/lab/netlab.sh up       build (or rebuild) the lab, then check it
#   infra/lab/netlab.sh down     stop the line/sshd/bridges, delete the namespaces
#   infra/lab/netlab.sh status   what is up, and the lab's env file
#   infra/lab/netlab.sh rtt MS   restart the long link with another RTT (keeps the rest)
#   infra/lab/netlab.sh check    measure RTT, raw TCP and ssh bulk rate, print them
#   infra/lab/netlab.sh exec CMD run CMD inside LAB (as the worker would be)
#
# Env: LAB_RTT_MS (20), LAB_RATE (1gbit, any tc rate), LAB_DIR (/var/tmp/ketter-lab),
#      LAB_NAME (ketter: namespaces ketter-lab and ketter-remote),
#      LAB_CHECK_MIB (256; 0 skips the bulk checks), KETTER_PG_PORT, KETTER_REDIS_PORT.
# Addresses: LAN 10.203.0.1/30 (LAB) <-> 10.203.0.2/30 (REMOTE); long link
# 10.203.1.1 <-> 10.203.1.2 (point to point). Nothing is routed anywhere else:
# neither namespace has a default route.
# Inside LAB, 127.0.0.1:5432 and :6379 are bridged (socat over a Unix socket in
# LAB_DIR) to the host's Postgres and Redis, so a worker in LAB needs no new config.
# REMOTE's sshd listens on port 22 of both addresses: 10.203.0.2 (no delay) and
# 10.203.1.2 (RTT added). lab.env says which address has which delay.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
LAB_NAME="${LAB_NAME:-ketter}"   # a second lab (the test) uses another name and LAB_DIR
LAB_NS="$LAB_NAME-lab"
REMOTE_NS="$LAB_NAME-remote"
LAB_IF="${LAB_NAME:0:10}-l0"
REMOTE_IF="${LAB_NAME:0:10}-r0"
LAB_ADDR=10.203.0.1
REMOTE_ADDR=10.203.0.2
LAB_WAN_ADDR=10.203.1.1
REMOTE_WAN_ADDR=10.203.1.2
LAB_WAN_IF="${LAB_NAME:0:10}-lw"
REMOTE_WAN_IF="${LAB_NAME:0:10}-rw"
LAB_DIR="${LAB_DIR:-/var/tmp/ketter-lab}"
LAB_RTT_MS="${LAB_RTT_MS:-20}"
LAB_RATE="${LAB_RATE:-1gbit}"
LAB_CHECK_MIB="${LAB_CHECK_MIB:-256}"
PG_PORT="${KETTER_PG_PORT:-5432}"
REDIS_PORT="${KETTER_REDIS_PORT:-6379}"
PY="${LAB_PYTHON:-$repo/.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
run="$LAB_DIR/run"
keys="$LAB_DIR/keys"

log() { echo "netlab: $*" >&2; }

need_tools() {
  local miss=()
  for t in ip tc ssh ssh-keygen socat; do command -v "$t" >/dev/null 2>&1 || miss+=("$t"); done
  [ -x /usr/sbin/sshd ] || miss+=(sshd)
  if [ "${#miss[@]}" -gt 0 ]; then
    log "missing ${miss[*]}: run 'bash scripts/bootstrap.sh lab'"; exit 1
  fi
  [ -d /run/sshd ] || mkdir -p /run/sshd
}

ns_exists() { ip netns list | cut -d' ' -f1 | grep -qx -- "$1"; }

# kill_pidfile FILE PATTERN: stop the process in FILE if its command line still matches.
kill_pidfile() {
  local file="$1" pattern="$2" pid
  [ -f "$file" ] || return 0
  pid="$(cat "$file" 2>/dev/null || true)"
  if [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$pattern"; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$file"
}

# spawn NS|- PIDFILE LOGFILE CMD...: start CMD detached (in namespace NS) and record its pid.
spawn() {
  local ns="$1" pidfile="$2" logfile="$3"; shift 3
  if [ "$ns" = "-" ]; then
    setsid "$@" >"$logfile" 2>&1 </dev/null &
  else
    setsid ip netns exec "$ns" "$@" >"$logfile" 2>&1 </dev/null &
  fi
  echo $! >"$pidfile"
}

make_keys() {
  mkdir -p "$keys" "$run"
  chmod 700 "$LAB_DIR" "$keys"
  [ -f "$keys/ssh_host_ed25519_key" ] || ssh-keygen -q -t ed25519 -N '' -C ketter-remote-host -f "$keys/ssh_host_ed25519_key"
  [ -f "$keys/client_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C ketter-lab-worker -f "$keys/client_ed25519"
  cp "$keys/client_ed25519.pub" "$keys/authorized_keys"
  local hostkey; hostkey="$(cut -d' ' -f1,2 "$keys/ssh_host_ed25519_key.pub")"
  printf '%s %s\n%s %s\n' "$REMOTE_ADDR" "$hostkey" "$REMOTE_WAN_ADDR" "$hostkey" >"$keys/known_hosts"
  cat >"$LAB_DIR/sshd_config" <<EOF
Port 22
ListenAddress $REMOTE_ADDR
ListenAddress $REMOTE_WAN_ADDR
ListenAddress 127.0.0.1
HostKey $keys/ssh_host_ed25519_key
PidFile $run/sshd.pid
AuthorizedKeysFile $keys/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
MaxStartups 200:30:400
MaxSessions 200
Subsystem sftp internal-sftp
LogLevel ERROR
EOF
}

# start_line: (re)start the long link at LAB_RTT_MS. Its TUN devices live as long as
# the process, so each start gives them their addresses again; sshd binds the WAN
# address with IP_FREEBIND semantics (listen before the address exists is refused),
# hence the line comes up before sshd on `up` and keeps sshd's socket on `rtt`.
start_line() {
  kill_pidfile "$run/line.pid" delay_line.py
  rm -f "$run/line.ready"
  spawn - "$run/line.pid" "$run/line.log" \
    "$PY" "$here/delay_line.py" --lab-ns "$LAB_NS" --remote-ns "$REMOTE_NS" \
    --lab-dev "$LAB_WAN_IF" --remote-dev "$REMOTE_WAN_IF" --rtt-ms "$LAB_RTT_MS" --rate "$LAB_RATE"
  for _ in $(seq 1 50); do
    ip -n "$REMOTE_NS" link show "$REMOTE_WAN_IF" >/dev/null 2>&1 && ip -n "$LAB_NS" link show "$LAB_WAN_IF" >/dev/null 2>&1 && break
    sleep 0.1
  done
  ip -n "$LAB_NS" addr add "$LAB_WAN_ADDR" peer "$REMOTE_WAN_ADDR" dev "$LAB_WAN_IF"
  ip -n "$REMOTE_NS" addr add "$REMOTE_WAN_ADDR" peer "$LAB_WAN_ADDR" dev "$REMOTE_WAN_IF"
  ip -n "$LAB_NS" link set "$LAB_WAN_IF" up txqueuelen 10000
  ip -n "$REMOTE_NS" link set "$REMOTE_WAN_IF" up txqueuelen 10000
  echo "$LAB_RTT_MS" >"$run/line.rtt"
}

write_env() {
  cat >"$LAB_DIR/lab.env" <<EOF
# written by infra/lab/netlab.sh up; source it
LAB_NS=$LAB_NS
REMOTE_NS=$REMOTE_NS
LAB_DIR=$LAB_DIR
LAB_ADDR=$LAB_ADDR
REMOTE_ADDR=$REMOTE_ADDR
REMOTE_USER=root
REMOTE_ADDR_DELAYED=$REMOTE_WAN_ADDR
SSH_PORT=22
LAB_RTT_MS=$LAB_RTT_MS
LAB_RATE=$LAB_RATE
LAB_DELAY_MODE=$(printf %q "$(cat "$run/delay_mode")")
IDENTITY=$keys/client_ed25519
KNOWN_HOSTS=$keys/known_hosts
EOF
}

ssh_argv() { # ssh_argv ADDR: the ssh command line a LAB process uses to reach REMOTE
  echo ssh -i "$keys/client_ed25519" -o BatchMode=yes -o IdentitiesOnly=yes \
    -o UserKnownHostsFile="$keys/known_hosts" -o StrictHostKeyChecking=yes root@"$1"
}

down() {
  kill_pidfile "$run/line.pid" delay_line.py
  kill_pidfile "$run/sink.pid" probe.py
  kill_pidfile "$run/sshd.pid" sshd
  for b in pg redis; do
    kill_pidfile "$run/bridge-$b-lab.pid" socat
    kill_pidfile "$run/bridge-$b-host.pid" socat
    rm -f "$run/$b.sock"
  done
  for ns in "$LAB_NS" "$REMOTE_NS"; do
    if ns_exists "$ns"; then
      # Anything still running in our namespaces was started by the lab or the bench.
      for pid in $(ip netns pids "$ns" 2>/dev/null); do kill "$pid" 2>/dev/null || true; done
      sleep 0.2
      for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
      ip netns del "$ns"
    fi
  done
  rm -f "$LAB_DIR/lab.env"
  log "down"
}

up() {
  local ns dev pair name port b
  need_tools
  down 2>/dev/null
  make_keys
  ip netns add "$LAB_NS"
  ip netns add "$REMOTE_NS"
  ip link add "$LAB_IF" type veth peer name "$REMOTE_IF"
  ip link set "$LAB_IF" netns "$LAB_NS"
  ip link set "$REMOTE_IF" netns "$REMOTE_NS"
  ip -n "$LAB_NS" addr add "$LAB_ADDR/30" dev "$LAB_IF"
  ip -n "$REMOTE_NS" addr add "$REMOTE_ADDR/30" dev "$REMOTE_IF"
  for pair in "$LAB_NS:$LAB_IF" "$REMOTE_NS:$REMOTE_IF"; do
    ns="${pair%%:*}"; dev="${pair#*:}"
    ip -n "$ns" link set lo up
    ip -n "$ns" link set "$dev" up
    # Rate limit each direction at its egress. burst must hold a GSO packet (64 KiB).
    ip netns exec "$ns" tc qdisc replace dev "$dev" root tbf rate "$LAB_RATE" burst 256kb latency 20ms
  done
  # netem would add the delay in the kernel; ours lacks it, so the line does it per packet.
  echo "delay line (per packet, user space; no sch_netem in this kernel)" >"$run/delay_mode"
  start_line
  # REMOTE stands for a server: its sshd (and every command run over ssh) gets a clean
  # ~/.bashrc through a private mount namespace. This machine's root .bashrc runs
  # `pyenv init`, which would add ~0.2 s to every remote command; the host is untouched.
  printf '# ketter lab REMOTE: a server shell, nothing to initialise\n' >"$LAB_DIR/remote_bashrc"
  local home_rc; home_rc="$(getent passwd root | cut -d: -f6)/.bashrc"
  if [ -f "$home_rc" ]; then
    ip netns exec "$REMOTE_NS" unshare --mount --propagation private \
      bash -c 'mount --bind "$1" "$2" && exec /usr/sbin/sshd -f "$3" -E "$4"' _ \
      "$LAB_DIR/remote_bashrc" "$home_rc" "$LAB_DIR/sshd_config" "$run/sshd.log"
  else
    ip netns exec "$REMOTE_NS" /usr/sbin/sshd -f "$LAB_DIR/sshd_config" -E "$run/sshd.log"
  fi
  for _ in $(seq 1 50); do [ -s "$run/sshd.pid" ] && break; sleep 0.1; done
  for b in pg:"$PG_PORT" redis:"$REDIS_PORT"; do
    name="${b%%:*}"; port="${b#*:}"
    spawn - "$run/bridge-$name-host.pid" "$run/bridge-$name-host.log" \
      socat "UNIX-LISTEN:$run/$name.sock,fork,unlink-early,mode=600" "TCP:127.0.0.1:$port"
    spawn "$LAB_NS" "$run/bridge-$name-lab.pid" "$run/bridge-$name-lab.log" \
      socat "TCP-LISTEN:$port,bind=127.0.0.1,fork,reuseaddr" "UNIX-CONNECT:$run/$name.sock"
  done
  write_env
  log "up: $LAB_NS $LAB_ADDR <-> $REMOTE_NS $REMOTE_ADDR, rate $LAB_RATE, RTT ${LAB_RTT_MS} ms via $(cat "$run/delay_mode")"
  check
}

check() {
  ns_exists "$LAB_NS" || { log "lab is down"; exit 1; }
  local rtt_d rtt_0
  # shellcheck disable=SC2046
  rtt_d="$(ip netns exec "$LAB_NS" "$PY" "$here/probe.py" rtt -- $(ssh_argv "$REMOTE_WAN_ADDR"))"
  # shellcheck disable=SC2046
  rtt_0="$(ip netns exec "$LAB_NS" "$PY" "$here/probe.py" rtt -- $(ssh_argv "$REMOTE_ADDR"))"
  echo "check: ssh echo RTT via the long link ($REMOTE_WAN_ADDR, asked $(cat "$run/line.rtt") ms): $rtt_d"
  echo "check: ssh echo RTT on the LAN ($REMOTE_ADDR, no delay): $rtt_0"
  if [ "$LAB_CHECK_MIB" -gt 0 ]; then
    spawn "$REMOTE_NS" "$run/sink.pid" "$run/sink.log" "$PY" "$here/probe.py" sink --listen "0.0.0.0:5001"
    for _ in $(seq 1 30); do
      ip netns exec "$REMOTE_NS" "$PY" -c "import socket; socket.create_connection(('$REMOTE_ADDR', 5001), 1).close()" 2>/dev/null && break
      sleep 0.1
    done
    # the readiness probe above also sent 0 bytes to the sink; it answered and moved on
    echo "check: raw TCP LAB->REMOTE on the LAN (asked $LAB_RATE): $(ip netns exec "$LAB_NS" "$PY" "$here/probe.py" send --to "$REMOTE_ADDR:5001" --mib "$LAB_CHECK_MIB")"
    # One TCP connection over the long link is bounded by its window; eight show the capacity.
    for c in 1 8; do
      echo "check: raw TCP over the long link, $c connection(s): $(ip netns exec "$LAB_NS" "$PY" "$here/probe.py" send --to "$REMOTE_WAN_ADDR:5001" --mib "$LAB_CHECK_MIB" --connections "$c")"
    done
    kill_pidfile "$run/sink.pid" probe.py
    local blob="$LAB_DIR/check.blob"
    [ "$(stat -c %s "$blob" 2>/dev/null || echo 0)" = "$((LAB_CHECK_MIB << 20))" ] || head -c "$((LAB_CHECK_MIB << 20))" /dev/urandom >"$blob"
    for addr in "$REMOTE_WAN_ADDR" "$REMOTE_ADDR"; do
      local t0 t1
      t0=$(date +%s.%N)
      # shellcheck disable=SC2046
      ip netns exec "$LAB_NS" $(ssh_argv "$addr") 'cat > /dev/null' <"$blob"
      t1=$(date +%s.%N)
      awk -v a="$t0" -v b="$t1" -v m="$LAB_CHECK_MIB" -v p="$addr" \
        'BEGIN { s = b - a; printf "check: ssh cat > /dev/null, %d MiB to %s: %.2f s, %.1f MB/s\n", m, p, s, m * 1.048576 / s }'
    done
  fi
}

status() {
  if ns_exists "$LAB_NS" && ns_exists "$REMOTE_NS"; then
    echo "namespaces: $LAB_NS $REMOTE_NS up"
    for p in line sshd bridge-pg-lab bridge-pg-host bridge-redis-lab bridge-redis-host; do
      if [ -f "$run/$p.pid" ] && kill -0 "$(cat "$run/$p.pid")" 2>/dev/null; then echo "  $p: pid $(cat "$run/$p.pid")"
      else echo "  $p: NOT running"; fi
    done
    ip netns exec "$LAB_NS" tc qdisc show dev "$LAB_IF" | sed 's/^/  LAB  /'
    ip netns exec "$REMOTE_NS" tc qdisc show dev "$REMOTE_IF" | sed 's/^/  REMOTE  /'
    [ -f "$LAB_DIR/lab.env" ] && sed 's/^/  /' "$LAB_DIR/lab.env"
  else
    echo "namespaces: down"
    return 3
  fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  check) check ;;
  rtt)
    [ -n "${2:-}" ] || { log "usage: netlab.sh rtt MS"; exit 2; }
    ns_exists "$REMOTE_NS" || { log "lab is down"; exit 1; }
    LAB_RTT_MS="$2"; start_line; write_env; log "long link RTT now ${LAB_RTT_MS} ms" ;;
  exec) shift; ns_exists "$LAB_NS" || { log "lab is down"; exit 1; }; exec ip netns exec "$LAB_NS" "$@" ;;
  *) echo "usage: $0 up|down|status|check|rtt MS|exec CMD..." >&2; exit 2 ;;
esac
