#!/usr/bin/env bash
# Idempotent setup of a fresh Debian 12 / Ubuntu 22.04 / 24.04 host for xvm-cni.
#
#   sudo scripts/bootstrap.sh          # what `demo.sh` needs
#   sudo scripts/bootstrap.sh --test   # plus podman, runc, busybox-static, reference CNI plugins
#   sudo scripts/bootstrap.sh --etcd   # plus etcd-server (demo.sh routed-etcd / l2-etcd)
#
# Installs missing system packages (one `apt-get update`, only when something is
# missing), creates .venv, `pip install -e '.[dev]'` when the package is not
# installed or pyproject.toml changed, and loads the kernel modules we need.
set -euo pipefail

log() { printf 'bootstrap: %s\n' "$*"; }
warn() { printf 'bootstrap: warning: %s\n' "$*" >&2; }
die() { printf 'bootstrap: error: %s\n' "$*" >&2; exit 1; }

with_test=0
with_etcd=0
for arg in "$@"; do
    case "$arg" in
        --test) with_test=1 ;;
        --etcd) with_etcd=1 ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) die "unknown argument: $arg (usage: bootstrap.sh [--test] [--etcd])" ;;
    esac
done

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

# --- system packages ------------------------------------------------------------
packages=(iproute2 nftables python3-venv python3-pip kmod procps iputils-ping iperf3)
if [[ $with_test -eq 1 ]]; then
    packages+=(containernetworking-plugins busybox-static podman runc etcd-server etcd-client)
elif [[ $with_etcd -eq 1 ]]; then
    packages+=(etcd-server)
fi

installed() {
    [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" == "install ok installed" ]]
}

missing=()
if command -v dpkg-query >/dev/null 2>&1; then
    for pkg in "${packages[@]}"; do
        installed "$pkg" || missing+=("$pkg")
    done
else
    warn "dpkg-query not found: not a Debian/Ubuntu system, skipping package checks"
fi

if [[ ${#missing[@]} -gt 0 ]]; then
    [[ $EUID -eq 0 ]] || die "missing packages (${missing[*]}); run as root (sudo $0 $*)"
    log "installing: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
        >/dev/null
else
    log "system packages present"
fi

# --- kernel modules -----------------------------------------------------------------
# Built-in modules have no .ko to load; check /sys/module and the kernel config first so
# a kernel without loadable modules (or without /lib/modules) does not produce warnings.
builtin_or_loaded() {
    local mod="$1" sym="$2" kver
    kver="$(uname -r)"
    [[ -d "/sys/module/$mod" ]] && return 0
    if [[ -r "/lib/modules/$kver/modules.builtin" ]] \
        && grep -q "/$mod\.ko" "/lib/modules/$kver/modules.builtin"; then
        return 0
    fi
    if [[ -r /proc/config.gz ]] && command -v zcat >/dev/null 2>&1 \
        && zcat /proc/config.gz 2>/dev/null | grep -x "CONFIG_$sym=y" >/dev/null; then
        return 0
    fi
    if [[ -r "/boot/config-$kver" ]] && grep -qx "CONFIG_$sym=y" "/boot/config-$kver"; then
        return 0
    fi
    return 1
}

for pair in vxlan:VXLAN bridge:BRIDGE veth:VETH nf_tables:NF_TABLES; do
    mod="${pair%%:*}"
    sym="${pair##*:}"
    builtin_or_loaded "$mod" "$sym" && continue
    if [[ $EUID -ne 0 ]]; then
        warn "kernel module $mod not loaded and not root: skipping modprobe"
    elif ! command -v modprobe >/dev/null 2>&1; then
        warn "kernel module $mod not loaded and modprobe is missing"
    elif modprobe "$mod" 2>/dev/null; then
        log "loaded kernel module $mod"
    else
        warn "could not load kernel module $mod (tests that need it will fail)"
    fi
done

# --- virtualenv ---------------------------------------------------------------------
venv="$repo/.venv"
stamp="$venv/.xvm-bootstrap-stamp"

if [[ ! -x "$venv/bin/python" ]]; then
    py=/usr/bin/python3
    [[ -x "$py" ]] || py="$(command -v python3 || true)"
    [[ -n "$py" ]] || die "python3 not found"
    log "creating $venv with $py"
    # A failed earlier attempt (python3-venv missing) can leave a venv without pip.
    rm -rf "$venv"
    "$py" -m venv "$venv"
fi

want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
have="$(cat "$stamp" 2>/dev/null || true)"
if [[ "$want" != "$have" ]] || ! "$venv/bin/python" -c 'import xvmcni' >/dev/null 2>&1 \
    || [[ ! -x "$venv/bin/xvmctl" ]]; then
    log "pip install -e '.[dev]' into .venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -e '.[dev]'
    printf '%s\n' "$want" >"$stamp"
else
    log "python package up to date"
fi

log "ready"
