#!/usr/bin/env bash
# Installs and starts what Ketter needs from the system, so a fresh Debian/Ubuntu
# machine runs `make test` / `make demo` with no hand work.
#   scripts/bootstrap.sh tools     rsync, ssh client+server, zip, unzip
#   scripts/bootstrap.sh services  tools + PostgreSQL and Redis, started; the Docker engine,
#                                  docker-compose and mmdebstrap (tests/infra/test_compose_run.py
#                                  starts dockerd itself) and systemd-analyze (unit checks)
#   scripts/bootstrap.sh lab       services + iproute2 (ip, tc) and socat for infra/lab/netlab.sh
set -euo pipefail

want="${1:-tools}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "bootstrap: not root and no sudo; install the packages listed in README.md by hand" >&2
  fi
fi

missing=()
need() { # need BINARY PACKAGE
  command -v "$1" >/dev/null 2>&1 || [ -x "$1" ] || missing+=("$2")
}
need rsync rsync
need ssh openssh-client
need /usr/sbin/sshd openssh-server
need zip zip
need unzip unzip
need xxhsum xxhash  # xxh128 content hashes on the remote side of the tests' own sshd
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=("python3-venv")
# What ../shared/maclike/build.sh compiles the Mac-like test host with (openrsync, rsync
# 2.6.9) and runs it on; installed here so the tests' kit build never needs apt itself.
need gcc gcc
need make make
need bmake bmake
need patch patch
need busybox busybox
need unshare util-linux
need cmp diffutils
[ -e /usr/include/stdio.h ] || missing+=("libc6-dev")
[ -e /usr/include/zlib.h ] || missing+=("zlib1g-dev")
if [ "$want" = "lab" ]; then
  need ip iproute2
  need tc iproute2
  need socat socat
fi
if [ "$want" = "services" ] || [ "$want" = "lab" ]; then
  ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing+=("postgresql")
  need redis-server redis-server
  # CI validates infra/docker-compose.yml with a compose client (no engine needed).
  command -v docker-compose >/dev/null 2>&1 || docker compose version >/dev/null 2>&1 \
    || missing+=("docker-compose")
  # The compose run in the test suite: Debian's engine (and its CLI, /usr/bin/docker),
  # stand-in base images made with mmdebstrap; systemd-analyze verifies infra/systemd/.
  need /usr/sbin/dockerd docker.io
  need /usr/bin/docker docker.io
  need mmdebstrap mmdebstrap
  need systemd-analyze systemd
fi

if [ "${#missing[@]}" -gt 0 ]; then
  echo "bootstrap: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  # policy-rc.d keeps package scripts from starting daemons we start ourselves.
  $SUDO apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${missing[@]}" | sort -u) >/dev/null
fi

# sshd refuses to start without its privilege-separation directory.
[ -d /run/sshd ] || $SUDO mkdir -p /run/sshd

if [ "$want" = "services" ] || [ "$want" = "lab" ]; then
  pg_host="${KETTER_PG_HOST:-127.0.0.1}"
  pg_port="${KETTER_PG_PORT:-5432}"
  if ! pg_isready -q -h "$pg_host" -p "$pg_port" 2>/dev/null; then
    echo "bootstrap: starting PostgreSQL"
    version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
    if [ -z "$version" ]; then
      echo "bootstrap: PostgreSQL installed but no cluster under /etc/postgresql" >&2; exit 1
    fi
    $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    for _ in $(seq 1 30); do pg_isready -q -h "$pg_host" -p "$pg_port" && break; sleep 1; done
    pg_isready -h "$pg_host" -p "$pg_port"
  fi
  # Tests connect as postgres over TCP; make sure that works without a password
  # on loopback (a stock Debian cluster asks for one).
  if ! psql -h "$pg_host" -p "$pg_port" -U postgres -d postgres -Atc 'select 1' >/dev/null 2>&1; then
    hba=$(ls /etc/postgresql/*/main/pg_hba.conf | sort -V | tail -n 1)
    echo "bootstrap: allowing trust auth on loopback in $hba"
    $SUDO sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main reload
    sleep 1
  fi
  if ! redis-cli -h 127.0.0.1 -p "${KETTER_REDIS_PORT:-6379}" ping >/dev/null 2>&1; then
    echo "bootstrap: starting Redis"
    $SUDO mkdir -p /var/lib/redis /var/log/redis
    $SUDO redis-server --daemonize yes --bind 127.0.0.1 --port "${KETTER_REDIS_PORT:-6379}" \
      --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ketter.log
    for _ in $(seq 1 20); do redis-cli -p "${KETTER_REDIS_PORT:-6379}" ping >/dev/null 2>&1 && break; sleep 0.5; done
  fi
fi
echo "bootstrap: ok ($want)"
