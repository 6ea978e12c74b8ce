#!/usr/bin/env bash
# Builds the Docker image libsecret-test/systemd-host:bookworm: a minimal Debian bookworm
# root filesystem (debootstrap) with systemd as PID 1, docker.io and fuse3. Tests run it as a
# "real" systemd host (socket activation, transient units, journald, an inner Docker engine).
# There is no image registry here, so the image is made with `docker import`.
#
# Run it as (see tests/support/systemd_host.rs for the exact flags):
#   docker run -d --cap-add ALL --cap-drop SYS_RESOURCE --security-opt seccomp=unconfined \
#     --security-opt apparmor=unconfined --cgroupns=host -v /sys/fs/cgroup:/sys/fs/cgroup:rw \
#     --tmpfs /run --tmpfs /run/lock --device /dev/fuse -v /var/lib/docker \
#     libsecret-test/systemd-host:bookworm
#
# Idempotent: does nothing if the image exists (set REBUILD=1 to force a rebuild).
# Prints one line per step.
set -euo pipefail

export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH"
export DEBIAN_FRONTEND=noninteractive

IMAGE="libsecret-test/systemd-host:bookworm"
SUITE=bookworm
FALLBACK_MIRROR="http://deb.debian.org/debian"
# What a real host running the plugin needs: an init (systemd + dbus), Docker, FUSE, and
# the small tools tests use (curl/jq for the plugin socket, procps/iproute2 for debugging,
# busybox-static for building test images inside).
INCLUDE="systemd,systemd-sysv,dbus,docker.io,fuse3,libfuse3-3,ca-certificates,curl,jq,procps,iproute2,busybox-static"

step() { printf '[build-systemd-host] %s\n' "$*"; }
die() {
    printf '[build-systemd-host] FATAL: %s\n' "$*" >&2
    exit 1
}

start=$(date +%s)

if [[ $(id -u) -ne 0 ]]; then
    die "must run as root (debootstrap, docker import)"
fi
command -v docker >/dev/null 2>&1 || die "docker CLI not found (run scripts/setup-test-host.sh first)"
docker info >/dev/null 2>&1 || die "the Docker engine does not answer 'docker info' (run scripts/setup-test-host.sh first)"

if [[ "${REBUILD:-0}" != 1 ]] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
    step "image: $IMAGE already present (REBUILD=1 to rebuild)"
    exit 0
fi

# --- 1. debootstrap -------------------------------------------------------------------
if ! command -v debootstrap >/dev/null 2>&1; then
    step "apt: installing debootstrap"
    apt-get update -qq || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends debootstrap >/dev/null || die "apt-get install debootstrap failed"
fi

# --- 2. mirror: the one apt uses on this machine --------------------------------------
find_mirror() {
    local f line uris suites
    # One-line format: deb [options] URI SUITE COMPONENTS...
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f "$f" ]] || continue
        while read -r line; do
            line=$(sed -E 's/\[[^]]*\]//' <<<"$line")
            # shellcheck disable=SC2086
            set -- $line
            if [[ "${1:-}" == deb && "${3:-}" == "$SUITE" ]]; then
                printf '%s\n' "${2%/}"
                return 0
            fi
        done < <(grep -E '^[[:space:]]*deb[[:space:]]' "$f" || true)
    done
    # deb822 format: stanzas separated by blank lines, with URIs: and Suites: fields.
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -f "$f" ]] || continue
        uris=""
        suites=""
        while IFS= read -r line || [[ -n "$line" ]]; do
            if [[ -z "${line//[[:space:]]/}" ]]; then
                if [[ -n "$uris" && " $suites " == *" $SUITE "* ]]; then
                    printf '%s\n' "${uris%% *}" | sed 's:/*$::'
                    return 0
                fi
                uris=""
                suites=""
                continue
            fi
            case "$line" in
                URIs:*) uris=$(sed -E 's/^URIs:[[:space:]]*//' <<<"$line") ;;
                Suites:*) suites=$(sed -E 's/^Suites:[[:space:]]*//' <<<"$line") ;;
            esac
        done < <(cat "$f"; echo)
    done
    return 1
}
if MIRROR=$(find_mirror) && [[ -n "$MIRROR" ]]; then
    step "mirror: $MIRROR (from the apt sources of this machine)"
else
    MIRROR=$FALLBACK_MIRROR
    step "mirror: $MIRROR (fallback: no '$SUITE' entry in the apt sources)"
fi

work=$(mktemp -d /var/tmp/systemd-host.XXXXXX)
cleanup() {
    # debootstrap may leave /proc, /sys mounted in the target on failure.
    local m
    while read -r m; do
        umount -l "$m" 2>/dev/null || true
    done < <(awk -v r="$work/rootfs" 'index($2, r) == 1 {print $2}' /proc/mounts | sort -r)
    rm -rf "$work"
}
trap cleanup EXIT
rootfs="$work/rootfs"

step "debootstrap: --variant=minbase --include=$INCLUDE $SUITE (log: $work/debootstrap.log)"
if ! debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$rootfs" "$MIRROR" >"$work/debootstrap.log" 2>&1; then
    echo "----- last 40 lines of the debootstrap log -----" >&2
    tail -n 40 "$work/debootstrap.log" >&2 || true
    [[ -f "$rootfs/debootstrap/debootstrap.log" ]] && tail -n 40 "$rootfs/debootstrap/debootstrap.log" >&2
    die "debootstrap failed"
fi
step "debootstrap: done ($(du -sh "$rootfs" | cut -f1))"

# --- 3. configure the root filesystem -------------------------------------------------
step "configure: hostname, apt sources, machine-id, journald"
echo "systemd-host" >"$rootfs/etc/hostname"
cat >"$rootfs/etc/hosts" <<'EOF'
127.0.0.1 localhost systemd-host
::1 localhost ip6-localhost ip6-loopback
EOF
echo "deb $MIRROR $SUITE main" >"$rootfs/etc/apt/sources.list"
# Empty machine-id: systemd generates one on first boot (then it persists in the container).
: >"$rootfs/etc/machine-id"
rm -f "$rootfs/var/lib/dbus/machine-id"
# Persistent journal (survives `docker restart`, i.e. a reboot); small.
mkdir -p "$rootfs/var/log/journal" "$rootfs/etc/systemd/journald.conf.d"
cat >"$rootfs/etc/systemd/journald.conf.d/10-test-host.conf" <<'EOF'
[Journal]
Storage=persistent
SystemMaxUse=64M
RateLimitBurst=0
EOF
# No password login is ever needed; tests use `docker exec`.
# Make dpkg/apt inside behave for tests that install the .deb: no docs, no recommends.
cat >"$rootfs/etc/apt/apt.conf.d/90-test-host" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
EOF

step "configure: enable docker.service, containerd.service"
chroot "$rootfs" systemctl enable docker.service containerd.service >/dev/null 2>&1 ||
    die "systemctl enable docker.service failed in the rootfs"
# Default target: no graphical/getty bits.
chroot "$rootfs" systemctl set-default multi-user.target >/dev/null 2>&1 || die "systemctl set-default failed"

# Units that fail or are pointless in a container (no udev-managed /dev, no consoles,
# read-only /proc/sys pieces, no kernel modules, no hardware, no timers we want firing).
MASK=(
    systemd-udevd.service systemd-udevd-control.socket systemd-udevd-kernel.socket
    systemd-udev-trigger.service systemd-udev-settle.service systemd-hwdb-update.service
    getty@tty1.service console-getty.service getty-static.service serial-getty@.service
    systemd-firstboot.service systemd-remount-fs.service systemd-modules-load.service
    kmod-static-nodes.service systemd-binfmt.service proc-sys-fs-binfmt_misc.automount
    proc-sys-fs-binfmt_misc.mount sys-kernel-config.mount sys-kernel-debug.mount
    sys-kernel-tracing.mount dev-hugepages.mount
    systemd-pstore.service systemd-machine-id-commit.service systemd-ask-password-wall.path
    apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer
    dpkg-db-backup.timer
)
step "configure: mask ${MASK[*]}"
for u in "${MASK[@]}"; do
    ln -sf /dev/null "$rootfs/etc/systemd/system/$u"
done

step "configure: clean apt caches and docs"
chroot "$rootfs" apt-get clean >/dev/null 2>&1 || true
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
    "$rootfs"/var/cache/debconf/*-old "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/* \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
    "$rootfs"/usr/share/locale/* "$rootfs"/tmp/* "$rootfs"/debootstrap
# Docker creates /.dockerenv itself; /run and /run/lock are tmpfs at run time.

# --- 4. import --------------------------------------------------------------------------
step "import: $IMAGE"
# `docker import -c` (Docker 20.10) does not accept STOPSIGNAL: import under a temporary tag,
# then add STOPSIGNAL with a one-line local build (FROM a local image: no registry needed).
# SIGRTMIN+3 makes systemd shut down cleanly on `docker stop`/`docker restart` (SIGTERM
# would only make it re-execute itself, and Docker would SIGKILL it after 10 s).
old_id=$(docker image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
tmp_tag="libsecret-test/systemd-host:import-$$"
tar -C "$rootfs" --numeric-owner -c . |
    docker import \
        -c 'CMD ["/lib/systemd/systemd"]' \
        -c 'ENV container=docker' \
        - "$tmp_tag" >/dev/null || die "docker import failed"
if ! out=$(printf 'FROM %s\nSTOPSIGNAL SIGRTMIN+3\n' "$tmp_tag" | docker build -q -t "$IMAGE" - 2>&1); then
    printf '%s\n' "$out" >&2
    docker rmi "$tmp_tag" >/dev/null 2>&1 || true
    die "docker build (STOPSIGNAL layer) failed"
fi
docker rmi "$tmp_tag" >/dev/null 2>&1 || true
docker image inspect "$IMAGE" >/dev/null 2>&1 || die "image $IMAGE was not created"
# REBUILD=1: drop the previous (now untagged) image unless a container still uses it.
if [[ -n "$old_id" && "$old_id" != "$(docker image inspect --format '{{.Id}}' "$IMAGE")" ]]; then
    docker rmi "$old_id" >/dev/null 2>&1 || true
fi

size=$(docker image inspect --format '{{.Size}}' "$IMAGE")
step "done: $IMAGE ($((size / 1024 / 1024)) MB) built in $(($(date +%s) - start)) s"
