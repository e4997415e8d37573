#!/usr/bin/env bash
# `make install` / `make uninstall`: skiff as a system service.
#
#   PREFIX (/opt/skiff)      the tree, its .venv and the BPF object
#   SYSCONFDIR (/etc)        skiff/config.json (installed only if absent, never overwritten), sysctl.d, the unit
#   DESTDIR                  staging root: every path above is written under it, and the host is not touched
#                            (no user is created, no systemctl, no sysctl)
#   SKIFF_VENV_FROM          optional: instead of `pip install` into the new venv (network or pip's cache), point
#                            it at this existing venv's site-packages (a .pth file): seconds instead of a minute
#   SKIFF_NO_USER=1          do not create the skiff system user
set -euo pipefail

action=${1:-install}
PREFIX=${PREFIX:-/opt/skiff}
SYSCONFDIR=${SYSCONFDIR:-/etc}
DESTDIR=${DESTDIR:-}
PYTHON=${PYTHON:-python3}
SRC=$(cd "$(dirname "$0")/.." && pwd)
UNIT_DIR=$SYSCONFDIR/systemd/system
root=$DESTDIR$PREFIX

say() { echo "install: $*"; }

install_tree() {
    mkdir -p "$root"
    # The tracked files (not the developer's .venv, caches or stamps), then the built BPF object.
    (cd "$SRC" && git ls-files -z 2>/dev/null || find . -path ./.venv -prune -o -type f -print0) |
        (cd "$SRC" && tar --null -T - -cf -) | tar -xf - -C "$root"
    if [ ! -f "$SRC/bpf/skiff.bpf.o" ]; then
        make -s -C "$SRC/bpf" || say "could not build bpf/skiff.bpf.o (clang missing?): --steering auto will use reuseport"
    fi
    [ -f "$SRC/bpf/skiff.bpf.o" ] && install -m 0644 "$SRC/bpf/skiff.bpf.o" "$root/bpf/skiff.bpf.o"
    return 0
}

install_venv() {
    if [ -n "${SKIFF_VENV_FROM:-}" ]; then
        "$PYTHON" -m venv --without-pip "$root/.venv"
        site=$("$SKIFF_VENV_FROM/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
        own=$("$root/.venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
        echo "$site" > "$own/skiff-deps.pth"
        say "venv $PREFIX/.venv uses the packages of $SKIFF_VENV_FROM"
    else
        "$PYTHON" -m venv "$root/.venv"
        "$PYTHON" "$SRC/scripts/requirements.py" > "$root/.venv/requirements.txt"
        "$root/.venv/bin/python" -m pip install -q -r "$root/.venv/requirements.txt"
    fi
}

install_user() {
    if [ -n "$DESTDIR" ] || [ "${SKIFF_NO_USER:-}" = 1 ]; then
        say "not creating the skiff user (DESTDIR or SKIFF_NO_USER set): the unit runs as User=skiff"
        return
    fi
    if ! getent passwd skiff >/dev/null; then
        useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin skiff
        say "created the system user skiff"
    fi
}

install_config() {
    local dir=$DESTDIR$SYSCONFDIR/skiff
    mkdir -p "$dir"
    if [ -e "$dir/config.json" ]; then
        say "$SYSCONFDIR/skiff/config.json exists: left as it is"
    else
        install -m 0640 "$SRC/config.json" "$dir/config.json"
        if [ -z "$DESTDIR" ] && getent group skiff >/dev/null; then chgrp skiff "$dir/config.json"; fi
        say "installed the example config as $SYSCONFDIR/skiff/config.json"
    fi
}

install_unit() {
    mkdir -p "$DESTDIR$UNIT_DIR" "$DESTDIR$SYSCONFDIR/sysctl.d"
    sed -e "s|/opt/skiff|$PREFIX|g" -e "s|/etc/skiff|$SYSCONFDIR/skiff|g" "$SRC/deploy/skiff.service" \
        > "$DESTDIR$UNIT_DIR/skiff.service"
    chmod 0644 "$DESTDIR$UNIT_DIR/skiff.service"
    install -m 0644 "$SRC/deploy/99-skiff.conf" "$DESTDIR$SYSCONFDIR/sysctl.d/99-skiff.conf"
    if [ -z "$DESTDIR" ]; then
        sysctl -q -p "$SYSCONFDIR/sysctl.d/99-skiff.conf" || say "could not apply 99-skiff.conf now (applied at boot)"
        systemctl daemon-reload 2>/dev/null || true
        say "next: systemctl enable --now skiff"
    fi
}

case $action in
install)
    install_tree
    install_venv
    install_user
    install_config
    install_unit
    say "skiff installed in $DESTDIR$PREFIX"
    ;;
uninstall)
    if [ -z "$DESTDIR" ] && systemctl is-active --quiet skiff 2>/dev/null; then
        echo "uninstall: skiff is running: systemctl disable --now skiff first" >&2
        exit 1
    fi
    rm -rf "$root"
    rm -f "$DESTDIR$UNIT_DIR/skiff.service" "$DESTDIR$SYSCONFDIR/sysctl.d/99-skiff.conf"
    [ -z "$DESTDIR" ] && { systemctl daemon-reload 2>/dev/null || true; }
    echo "uninstall: removed $PREFIX, the unit and the sysctl file; kept $SYSCONFDIR/skiff (your config) and the" \
         "skiff user (userdel skiff)"
    ;;
*)
    echo "usage: install.sh install|uninstall" >&2
    exit 2
    ;;
esac
