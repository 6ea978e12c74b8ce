#!/usr/bin/env bash
# Regenerates packaging/hot-text.order: the functions a mount unit runs, which build.rs has the linker place together
# (issue #6, target P5). Run it after a toolchain or dependency update (symbol names change with them) or a change to
# the code mount units run, then check the P5 line of `cargo bench --bench service`. A stale list costs memory, never
# correctness, and tests/core_hot_text_order.rs fails when more than 1 in 20 of its names are not in the build.
#   packaging/profile-hot-text.sh
# Needs root, docker, the systemd host image (scripts/build-systemd-host.sh), valgrind, python3 and OpenBao at
# /usr/local/bin/bao (scripts/setup-test-host.sh).
#
# It builds the package with a linker map, then in a systemd host serves a volume from a mount unit under valgrind
# (lackey: every block of code entered), reads a secret and stops the unit, once with the default config and once
# with short intervals so that refresh passes run, and lists the functions entered.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

map=$PWD/target/hot-text.map
rm -f "$map"
touch build.rs # relink, to write the map
LIBSECRET_LINK_MAP=$map bash packaging/build-deb.sh >/dev/null
[ -s "$map" ] || { echo "no linker map: build.rs did not use LLD's options" >&2; exit 1; }
bao=/usr/local/bin/bao
[ -x "$bao" ] || { echo "$bao missing: run scripts/setup-test-host.sh" >&2; exit 1; }
deb=$(ls target/debian/*.deb)

host=libsecret-hot-text-$$
trap 'docker rm -f -v "$host" >/dev/null 2>&1 || true' EXIT
docker run -d --name "$host" --cap-add ALL --cap-drop SYS_RESOURCE --security-opt seccomp=unconfined \
  --security-opt apparmor=unconfined --cgroupns=host -v /sys/fs/cgroup:/sys/fs/cgroup:rw --tmpfs /run \
  --tmpfs /run/lock --device /dev/fuse libsecret-test/systemd-host:bookworm /lib/systemd/systemd >/dev/null
for _ in $(seq 90); do
  case "$(docker exec "$host" systemctl is-system-running 2>/dev/null || true)" in running | degraded) break ;; esac
  sleep 1
done
docker cp "$deb" "$host:/root/p.deb"
docker cp "$bao" "$host:/usr/local/bin/bao"
# valgrind's lackey, from this host (the image is Debian bookworm too).
tar -C / -cf - usr/bin/valgrind usr/bin/valgrind.bin usr/libexec/valgrind/lackey-amd64-linux \
  usr/libexec/valgrind/vgpreload_core-amd64-linux.so usr/libexec/valgrind/default.supp |
  docker exec -i "$host" tar -C / -xf -
docker exec "$host" sh -c '
  systemd-run --quiet --unit=vault /usr/local/bin/bao server -dev -dev-root-token-id=profile-root-token \
    -dev-listen-address=127.0.0.1:8200 -dev-no-store-token
  for _ in $(seq 100); do curl -fs http://127.0.0.1:8200/v1/sys/health >/dev/null && break; sleep 0.2; done
  curl -fs http://127.0.0.1:8200/v1/sys/health >/dev/null || { journalctl -u vault | tail -n 20; exit 1; }
  curl -fsS -H "X-Vault-Token: profile-root-token" -X POST -d "{\"data\": {\"value\": \"v\"}}" \
    http://127.0.0.1:8200/v1/secret/data/app/key >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q /root/p.deb >/dev/null 2>&1
  umask 077; echo profile-root-token > /etc/docker-volume-libsecret/token
  mkdir -p /run/hot-text/mnt'

# profile SECONDS < CONFIG: serves a volume under lackey with this config, reads a secret, waits, stops; appends the
# load address and every block entered to $trace.
trace=$(mktemp)
trap 'docker rm -f -v "$host" >/dev/null 2>&1 || true; rm -f "$trace" "$trace.run"' EXIT
profile() {
  docker exec -i "$host" sh -c 'cat > /etc/docker-volume-libsecret/config.toml; rm -f /run/lackey; mkfifo /run/lackey'
  # Mount units borrow their token from the driver (its token broker), so the driver runs under the same config.
  docker exec "$host" sh -c 'systemctl restart docker-volume-libsecret
    for _ in $(seq 100); do [ -S /run/docker-volume-libsecret/broker.sock ] && break; sleep 0.1; done
    [ -S /run/docker-volume-libsecret/broker.sock ] || { echo "the driver did not start its token broker" >&2; exit 1; }'
  docker exec "$host" sh -c 'grep "^SB" /run/lackey | sort -u' >"$trace.run" &
  local reader=$!
  docker exec "$host" systemd-run --quiet --unit=profile -p Type=notify -p NotifyAccess=main -p TimeoutStartSec=300 \
    /usr/bin/valgrind --tool=lackey --trace-superblocks=yes --vex-guest-chase=no --log-file=/run/lackey \
    /usr/bin/docker-volume-libsecret --config /etc/docker-volume-libsecret/config.toml serve-mount \
    --volume secret/app --mountpoint /run/hot-text/mnt
  docker exec "$host" sh -c 'grep -m1 " 00000000 .*/usr/bin/docker-volume-libsecret$" \
    /proc/$(systemctl show -p MainPID --value profile)/maps | cut -d- -f1' >>"$trace"
  # The read must succeed: a profile of a failing read would order the wrong code.
  docker exec "$host" sh -c 'cat /run/hot-text/mnt/key >/dev/null' || { echo "the mount unit could not read the secret" >&2; exit 1; }
  docker exec "$host" sh -c 'stat /run/hot-text/mnt/missing >/dev/null 2>&1 || true'
  sleep "$1"
  docker exec "$host" systemctl stop profile
  wait "$reader"
  cat "$trace.run" >>"$trace"
}
vault='[vault]
addr = "http://127.0.0.1:8200"
token_file = "/etc/docker-volume-libsecret/token"'
# The defaults, then short intervals so that refresh passes run within the profile.
profile 5 <<<"$vault"
profile 15 <<<"cache_ttl = \"2s\"
refresh_interval = \"3s\"
$vault"

python3 - "$map" "$trace" packaging/hot-text.order <<'EOF'
import bisect, re, sys
map_file, trace, out = sys.argv[1:]
sections = []  # (address, size, symbol) of each function's own section in .text
in_text = False
for line in open(map_file):
    # VMA, LMA, size, alignment, then an output section, an input section or a symbol, each indented 8 more.
    row = re.match(r"\s*([0-9a-f]+)\s+[0-9a-f]+\s+([0-9a-f]+)\s+\d+ ( *)(.*)$", line)
    if not row:
        continue
    if row.group(3) == "":
        in_text = row.group(4) == ".text"
    elif in_text and len(row.group(3)) == 8:
        name = re.search(r":\(\.text\.(?:(?:unlikely|hot|startup|exit)\.)?(.+)\)$", row.group(4))
        if name:
            sections.append((int(row.group(1), 16), int(row.group(2), 16), name.group(1)))
sections.sort()
starts = [s[0] for s in sections]
hot, runs = set(), 0
for line in open(trace):
    if not line.startswith("SB "):  # a run's load address
        base, runs = int(line, 16), runs + 1
        continue
    address = int(line.split()[1], 16) - base
    i = bisect.bisect_right(starts, address) - 1
    if i >= 0 and address < sections[i][0] + sections[i][1]:
        hot.add(sections[i][2])
with open(out, "w") as f:
    f.write("# The functions a mount unit runs: made by packaging/profile-hot-text.sh, read by build.rs.\n")
    f.write("".join(name + "\n" for name in sorted(hot)))
print(f"{runs} runs: {len(hot)} functions, {sum(s[1] for s in sections if s[2] in hot) // 1024} KiB, in {out}")
EOF

# The package profiled above was linked with the previous order: rebuild it with the new one, so that
# `cargo bench --bench service -- p5` measures what this order gives (it installs target/debian/*.deb).
touch build.rs
bash packaging/build-deb.sh >/dev/null
echo "rebuilt $(ls target/debian/*.deb) with the new order"
