#!/usr/bin/env bash
# Installs the Debian packages skiff needs, only when something is missing: clang/llvm and libbpf-dev build the
# BPF program, libbpf1 loads it, iptables and iproute2 serve the tests (blackholed targets, network namespaces),
# etcd-server and etcd-client are the clustered config source (and its tests' 3-member cluster); pebble is the
# ACME server of the TLS tests (pebble and pebble-challtestsrv); chromium and chromium-driver drive the status
# page's browser test (selenium), prometheus (with promtool) scrapes skiff in a test and checks the shipped
# alert rules. On a machine that has none of them this amounts to: apt-get install clang llvm libbpf-dev libbpf1
# iptables iproute2 etcd-server etcd-client pebble chromium chromium-driver prometheus.
set -euo pipefail

missing=()
command -v clang >/dev/null 2>&1 || missing+=(clang)
command -v llvm-strip >/dev/null 2>&1 || missing+=(llvm)
[ -f /usr/include/bpf/bpf_helpers.h ] || missing+=(libbpf-dev)
ldconfig -p 2>/dev/null | grep -q 'libbpf.so.1 ' || missing+=(libbpf1)
command -v iptables >/dev/null 2>&1 || missing+=(iptables)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || missing+=(etcd-client)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v pebble >/dev/null 2>&1 || missing+=(pebble)

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "skiff needs these Debian packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})" >&2
  exit 1
fi
echo "installing (missing: ${missing[*]})"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
