#!/usr/bin/env bash
# Installs the benchmark's tools (haproxy, nginx, wrk, iperf3) from Debian when missing.
# Idempotent: does nothing when every tool is present. The packages' own services are never left
# running: a policy-rc.d that refuses every start is in force during the install (we add one only if the
# machine has none, and remove only the one we added), and any daemon that still appears is stopped by PID.
set -euo pipefail

declare -A PACKAGE_FOR=([haproxy]=haproxy [nginx]=nginx-light [wrk]=wrk [iperf3]=iperf3)

missing=()
for tool in haproxy nginx wrk iperf3; do
    # nginx and haproxy live in /usr/sbin, which a non-login PATH may lack.
    if ! command -v "$tool" >/dev/null 2>&1 && [[ ! -x /usr/sbin/$tool ]]; then
        missing+=("${PACKAGE_FOR[$tool]}")
    fi
done

if ((${#missing[@]} == 0)); then
    echo "bench/setup.sh: haproxy, nginx, wrk and iperf3 are already installed"
    exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
    echo "bench/setup.sh: missing ${missing[*]}; run as root (apt-get) or install them yourself" >&2
    exit 1
fi

daemon_pids() { for name in haproxy nginx iperf3; do pgrep -x "$name" || true; done | sort; }

policy=/usr/sbin/policy-rc.d
added_policy=0
if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\n# added by skiff bench/setup.sh for the length of one install\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    added_policy=1
fi
cleanup() { if ((added_policy)); then rm -f "$policy"; fi; }
trap cleanup EXIT

before=$(daemon_pids)
echo "bench/setup.sh: installing ${missing[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"

# Where systemd runs, the units are enabled at install time; disable them so a reboot does not start them.
if [[ -d /run/systemd/system ]]; then
    systemctl disable --now haproxy.service nginx.service iperf3.service >/dev/null 2>&1 || true
fi
# Anything the install started despite the policy: stop it by PID, never by name.
for pid in $(comm -13 <(echo "$before") <(daemon_pids)); do
    echo "bench/setup.sh: stopping daemon $pid ($(ps -o comm= -p "$pid" || true)) started by the install"
    kill "$pid" 2>/dev/null || true
done
echo "bench/setup.sh: done"
