#!/usr/bin/env bash
# vpnaaa's ESP datapath against a real Linux kernel, with strongSwan's charon as the client.
#
#   tests/kernel/scenario.sh prepare OUT   on the host: vpnaaa state (config, CA, server
#                                          certificate, user alice) and the charon configs
#   tests/kernel/scenario.sh run OUT       as root on a kernel with ESP (the VM that
#                                          scripts/kernel-vm boots): the checks below
#
# OUT must be writable and at the same path in both places (scripts/kernel-vm passes it to
# the VM as an --rwdir). Results: OUT/results.txt (one PASS/FAIL line per check), logs,
# captures and xfrm dumps next to it. The exit status is 0 only if every check passed.
#
# Topology (network namespaces; documentation addresses only, pool 10.99.1.0/24):
#
#   vk-cl  198.51.100.2/25 --- 198.51.100.1/25   vk-gw  203.0.113.1/24 --- 203.0.113.2/24  vk-lan
#   (charon, plain)                              (twistd vpnaaa,
#                                                 installer = "kernel")
#   vk-ncl 192.0.2.2/24 --- 192.0.2.1/24 vk-nat 198.51.100.130/25 --- 198.51.100.129/25 vk-gw
#   (charon, behind NAT)       (nftables masquerade)
#
# The gateway's default route points at its uplink (the plain client's link), as on a real
# gateway: replies to the pool follow it and the XFRM out policy vpnaaa installed catches
# them. charon uses kernel-netlink (not kernel-libipsec): both ends are kernel ESP.
#
# Checks, for the plain case and the NAT-T case (UDP-encapsulated ESP through the NAT):
# EAP-MSCHAPv2 + virtual IP; the gateway holds exactly the CHILD_SA's two SAs (vpnaaa's reqid
# range, the client's SPIs, espinudp 4500/4500 behind the NAT) and in/fwd/out policies; a
# ping from the virtual IP to vk-lan gets every answer; `tcpdump -Q out` on both ends of the
# client link sees only ESP (ESP-in-UDP), never ICMP in clear, and tshark decrypts that ESP
# to the pings with the esp_sa file of vpnaaa's key log ([debug] keylog, mode 0600, the
# daemon user's); SA counters count the pings
# and grow with a second ping; `swanctl --rekey --child` during a running ping loses nothing
# and leaves two new SAs with the same reqid; `swanctl --terminate` leaves no SA and no
# policy on the gateway, and the session's accounting Stop in the local log counts every ping
# answered, before and after the rekey (kernel counters, RFC 2866 §5.3-5.9: the rekeyed-away
# CHILD_SA's read as it left the kernel). Plain case only: a second CHILD_SA whose algorithm the kernel lacks
# (module chacha20poly1305 blocked, as on a kernel built without it) fails with a notify to
# the client and a log line, while the first CHILD_SA keeps carrying traffic. Then the
# daemon stops on SIGTERM leaving nothing in the kernel, and its log has no traceback; its
# accounting log begins with Accounting-On and ends with Accounting-Off (RFC 2866 §5.1).
#
# Last, the gateway speaking first: the daemon again, with dpd_delay 6 s, retransmissions
# after 2, 3 and 4.5 s and child_lifetime 120 s, and two clients at once (bob plain, alice
# behind the NAT). bob's busy tunnel (pings for 4 x dpd_delay) gets no liveness request
# (counted in charon's log) while alice's idle one gets some; once idle, bob's gets one
# within 2 x dpd_delay and charon answers; silenced with nftables (nothing from vk-cl
# reaches the gateway, no DELETE), his session ends as a dead peer within dpd_delay +
# retransmissions and none of his SAs and policies stays, while alice's stay. alice's
# CHILD_SA reaches its hard lifetime in the kernel: the gateway removes both SAs and its
# policies, charon logs the DELETE it received for it, and charon's kernel drops its SAs
# too. The daemon stops as above.
#
# Then the gateway rekeys (rekey = "gateway", ike_lifetime = child_lifetime = 30 s, the
# minimums; the client never rekeys): a third daemon, and alice plain again. The gateway
# starts a CHILD_SA rekey (and an IKE rekey) 24-27 s after the CHILD_SA came up, while a ping
# runs: no ping is lost, charon logs the gateway's CREATE_CHILD_SA with N(REKEY_SA) and the
# IKE_SA rekeyed, the new SAs replace both old ones with the same reqid, the session did not
# end; `swanctl --terminate` then leaves no SA and no policy, and the accounting Stop counts
# every ping of the run across the gateway's rekeys. The daemon stops as above.
set -u

MODE=${1:-}
OUT=${2:-}
if [ -z "$MODE" ] || [ -z "$OUT" ]; then
    echo "usage: $0 prepare|run OUT" >&2
    exit 2
fi
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
VENV=${VENV:-$REPO/.venv}
STATE=$OUT/state
ADMIN_DIR=/tmp/vk-admin # the admin API's socket (tmpfs in the VM; the daemon user's)
CA=$STATE/pki/ca/ca.pem
GW_PLAIN=198.51.100.1
GW_NAT=198.51.100.129
LAN_HOST=203.0.113.2
POOL_PREFIX=10.99.1.
REQID_BASE=$((0x76700000)) # vpnaaa.service.REQID_BASE
REQID_END=$((REQID_BASE + 0x100000))
# the last phase's daemon: liveness checks after LC_DPD s of silence, our requests sent
# again after 2, 3 and 4.5 s, CHILD_SAs that live LC_CHILD_LIFETIME s (config.py's minimum)
LC_DPD=6
LC_RT_TIMEOUT=2
LC_RT_BASE=1.5
LC_RT_TRIES=2
LC_CHILD_LIFETIME=120
# the rekey phase's daemon: rekey = "gateway", IKE SAs and CHILD_SAs that live RK_LIFETIME s
# (config.py's minimum): the gateway rekeys both 0.8-0.9 x RK_LIFETIME s after they came up
RK_LIFETIME=30
PLUGINS="random nonce x509 revocation constraints pubkey pkcs1 pkcs8 pem openssl gmp"
PLUGINS="$PLUGINS curve25519 hmac kdf sha2 aes gcm kernel-netlink socket-default vici attr"
PLUGINS="$PLUGINS eap-identity eap-mschapv2"

# --- prepare (host) ------------------------------------------------------------------------

charon_config() { # NAME GATEWAY IKE-PROPOSALS ESP-PROPOSALS [extra children lines] [USER SECRET]
    local name=$1 gateway=$2 ike=$3 esp=$4 extra=${5:-} user=${6:-alice} secret=${7:-wonderland}
    local dir=$OUT/$name
    local sub
    for sub in x509 x509ca x509ocsp x509aa x509ac x509crl pubkey private rsa ecdsa bliss pkcs8 pkcs12; do
        mkdir -p "$dir/swanctl/$sub"
    done
    cp "$CA" "$dir/swanctl/x509ca/ca.pem"
    cat >"$dir/strongswan.conf" <<EOF
charon {
  load = $PLUGINS
  port = 500
  port_nat_t = 4500
  plugins {
    vici {
      socket = unix:///tmp/vk/$name/charon.vici
    }
  }
  filelog {
    charon {
      path = $dir/charon.log
      default = 1
      ike = 2
      knl = 2
      chd = 1
      cfg = 1
      net = 1
      append = no
      flush_line = yes
      ike_name = yes
      time_format = "%H:%M:%S"
    }
  }
}
EOF
    cat >"$dir/swanctl/swanctl.conf" <<EOF
connections {
  vpnaaa {
    version = 2
    remote_addrs = $gateway
    proposals = $ike
    vips = 0.0.0.0
    rekey_time = 0
    dpd_delay = 0
    local {
      auth = eap-mschapv2
      eap_id = $user
    }
    remote {
      auth = pubkey
      id = $gateway
      cacerts = $dir/swanctl/x509ca/ca.pem
    }
    children {
      net {
        remote_ts = 0.0.0.0/0
        esp_proposals = $esp
        rekey_time = 0
      }
$extra
    }
  }
}
secrets {
  eap-$user {
    id = $user
    secret = $secret
  }
}
EOF
}

vpnaaa_config() { # FILE [more [ike] lines]
    (
        umask 077
        cat >"$1" <<EOF
[general]
state_dir = "$STATE"
log_level = "debug"

[radius]
enabled = false

[ike]
enabled = true
installer = "kernel"
listen = "0.0.0.0"
pool = "${POOL_PREFIX}0/24"
eap_methods = ["mschapv2"]
${2:-}
[admin]
socket = "$ADMIN_DIR/admin.sock"
EOF
    )
}

prepare() {
    rm -rf "$STATE" "$OUT/plain" "$OUT/nat" "$OUT/dpd" "$OUT/expiry" "$OUT/rekey"
    mkdir -p "$STATE"
    chmod 700 "$STATE"
    vpnaaa_config "$STATE/vpnaaa.toml"
    # keys for Wireshark (state_dir/keylog): tshark decrypts the captured ESP below
    printf '[debug]\nkeylog = true\n' >>"$STATE/vpnaaa.toml"
    # the last phase's daemon: quick liveness checks and give-up, short CHILD_SA lifetimes
    vpnaaa_config "$STATE/vpnaaa-lifecycle.toml" "dpd_delay = $LC_DPD
retransmit_timeout = $LC_RT_TIMEOUT
retransmit_base = $LC_RT_BASE
retransmit_tries = $LC_RT_TRIES
child_lifetime = $LC_CHILD_LIFETIME"
    # the rekey phase's daemon: the gateway rekeys, at the shortest lifetimes
    vpnaaa_config "$STATE/vpnaaa-rekey.toml" "rekey = \"gateway\"
ike_lifetime = $RK_LIFETIME
child_lifetime = $RK_LIFETIME"
    local cli=("$VENV/bin/vpnaaa" --config "$STATE/vpnaaa.toml")
    "${cli[@]}" pki init >/dev/null || return 1
    "${cli[@]}" pki issue "$GW_PLAIN" --alt "$GW_NAT" >/dev/null || return 1
    printf 'wonderland\n' | "${cli[@]}" user add alice --password-stdin >/dev/null || return 1
    printf 'looking-glass\n' | "${cli[@]}" user add bob --password-stdin >/dev/null || return 1
    # plain: AES-CBC/SHA-256/MODP2048 for IKE, AES-GCM for ESP; plus a CHILD_SA the kernel
    # will refuse (ChaCha20-Poly1305 with its module blocked in the VM)
    local bad="      bad {
        remote_ts = $LAN_HOST/32
        esp_proposals = chacha20poly1305
        rekey_time = 0
      }"
    charon_config plain "$GW_PLAIN" aes256-sha256-modp2048 aes256gcm16 "$bad"
    # NAT-T: AES-GCM/Curve25519 for IKE, AES-CBC + HMAC-SHA-256 for ESP
    charon_config nat "$GW_NAT" aes128gcm16-prfsha256-curve25519 aes256-sha256
    # the last phase: two users at once (each charon sends INITIAL_CONTACT, which would
    # end the same user's other session); bob plain and silenced later, alice behind the
    # NAT until her CHILD_SA's hard lifetime
    charon_config dpd "$GW_PLAIN" aes256-sha256-modp2048 aes256gcm16 "" bob looking-glass
    charon_config expiry "$GW_NAT" aes128gcm16-prfsha256-curve25519 aes256-sha256
    # the rekey phase: alice plain; charon's own rekeys are off (rekey_time = 0 for the IKE_SA
    # and the CHILD_SA, and so no hard lifetime either), every rekey is the gateway's
    charon_config rekey "$GW_PLAIN" aes256-sha256-modp2048 aes256gcm16
    # the daemon runs as vpnaaa after start-up: the user exists on the host (the guest sees
    # its /etc), owns the state (ownership set here, not through the guest's 9p mount) and
    # can reach it through OUT
    "$REPO/scripts/system-user" vpnaaa >/dev/null || return 1
    chown -R vpnaaa:vpnaaa "$STATE"
    chmod 711 "$OUT"
    echo "prepared $OUT"
}

# --- run (guest) ---------------------------------------------------------------------------

RUN=/tmp/vk # runtime files: vici sockets, charon pid dirs (tmpfs in the VM)
RESULTS=$OUT/results.txt
PASSED=0
FAILED=0

say() { printf '[%4ds] %s\n' "$SECONDS" "$*"; }

pass() {
    PASSED=$((PASSED + 1))
    echo "PASS $1" >>"$RESULTS"
    say "PASS $1"
}

fail() {
    FAILED=$((FAILED + 1))
    echo "FAIL $1${2:+: $2}" >>"$RESULTS"
    say "FAIL $1${2:+: $2}"
}

check() { # NAME DETAIL COMMAND...: PASS if COMMAND succeeds
    local name=$1 detail=$2
    shift 2
    if "$@"; then pass "$name"; else fail "$name" "$detail"; fi
}

n() { # NS COMMAND...
    local ns=$1
    shift
    ip netns exec "vk-$ns" "$@"
}

has() { grep -qi -- "$2" <<<"$1"; } # TEXT PATTERN

not() { ! "$@"; }

wait_until() { # SECONDS COMMAND...: poll every 0.5 s
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do
        [ "$SECONDS" -ge "$deadline" ] && return 1
        sleep 0.5
    done
}

topology() {
    local ns
    for ns in gw cl lan nat ncl; do
        ip netns add "vk-$ns" || return 1
        ip -n "vk-$ns" link set lo up
        # IPv4 only: no IPv6 neighbour discovery in the captures
        n "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
    done
    veth gw gw-c 198.51.100.1/25 cl c-gw 198.51.100.2/25 || return 1
    veth gw gw-n 198.51.100.129/25 nat n-gw 198.51.100.130/25 || return 1
    veth gw gw-l 203.0.113.1/24 lan l-gw 203.0.113.2/24 || return 1
    veth nat n-c 192.0.2.1/24 ncl c-n 192.0.2.2/24 || return 1
    ip -n vk-gw route add default via 198.51.100.2 || return 1
    ip -n vk-lan route add default via 203.0.113.1 || return 1
    ip -n vk-ncl route add default via 192.0.2.1 || return 1
    n gw sysctl -qw net.ipv4.ip_forward=1 || return 1
    n nat sysctl -qw net.ipv4.ip_forward=1 || return 1
    n nat nft -f - <<'EOF' || return 1
table ip nat {
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    oifname "n-gw" masquerade
  }
}
EOF
}

veth() { # NS1 IF1 ADDR1 NS2 IF2 ADDR2
    ip link add "$2" netns "vk-$1" type veth peer name "$5" netns "vk-$4" || return 1
    ip -n "vk-$1" addr add "$3" dev "$2" && ip -n "vk-$1" link set "$2" up &&
        ip -n "vk-$4" addr add "$6" dev "$5" && ip -n "vk-$4" link set "$5" up
}

# the gateway's SAs, one line each: src dst spi reqid bytes packets encap(0/1)
gw_sas() {
    ip -n vk-gw -s xfrm state | awk '
        function flush() { if (spi != "") print src, dst, spi, reqid, bytes, packets, encap }
        /^src / { flush(); src = $2; dst = $4; spi = ""; reqid = ""; bytes = -1; packets = -1; encap = 0 }
        /proto esp spi/ {
            for (i = 1; i <= NF; i++) {
                if ($i == "spi") { spi = $(i + 1); sub(/\(.*/, "", spi) }
                if ($i == "reqid") { reqid = $(i + 1); sub(/\(.*/, "", reqid) }
            }
        }
        /encap type espinudp sport 4500 dport 4500/ { encap = 1 }
        /lifetime current:/ { want = 1; next }
        want && /\(bytes\)/ {
            line = $0; gsub(/\(bytes\),|\(packets\)/, " ", line); split(line, f, " ")
            bytes = f[1]; packets = f[2]; want = 0
        }
        END { flush() }'
}

spis() { # NS: the SPIs of that namespace's SAs, sorted, one line
    ip -n "vk-$1" xfrm state | awk '/proto esp spi/ { for (i = 1; i <= NF; i++) if ($i == "spi") print $(i + 1) }' |
        sort | tr '\n' ' '
}

# SPD entries of the gateway by kind: "dir" (in/out/fwd, vpnaaa's CHILD_SAs) or "socket"
# (the per-socket bypass policies of the IKE sockets, which `ip xfrm policy` lists too)
policies() { ip -n vk-gw xfrm policy | grep -cE "^[[:space:]]*$1 (in|out|fwd)"; }

# no SA and no in/out/fwd policy (the IKE sockets' own policies stay while they are open)
gw_empty() { [ -z "$(ip -n vk-gw xfrm state)" ] && [ "$(policies dir)" -eq 0 ]; }

dump_xfrm() { # TAG
    {
        echo "== gw: ip -s xfrm state"
        ip -n vk-gw -s xfrm state
        echo "== gw: ip xfrm policy"
        ip -n vk-gw xfrm policy
    } >"$OUT/xfrm-$1.txt" 2>&1
}

DAEMON_LOG=$OUT/vpnaaa.log                          # the running daemon's (twistd rotates it)
vpnaaa_log() { cat "$DAEMON_LOG"* 2>/dev/null; }

start_daemon() { # NAME: twistd vpnaaa with STATE/NAME.toml, logging to OUT/NAME.log
    local name=$1 label=
    [ "$name" = vpnaaa ] || label="${name#vpnaaa-}: "
    say "starting twistd vpnaaa ($name.toml) in vk-gw (Python under TCG: give it a minute)"
    DAEMON_LOG=$OUT/$name.log
    rm -f "$DAEMON_LOG"*
    install -d -m 700 -o vpnaaa -g vpnaaa "$ADMIN_DIR"
    ip netns exec vk-gw env PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
        "$VENV/bin/python" "$VENV/bin/twistd" -n --pidfile= --logfile="$DAEMON_LOG" \
        vpnaaa --config "$STATE/$name.toml" >"$OUT/twistd-$name.out" 2>&1 &
    DAEMON=$!
    local deadline=$((SECONDS + 300))
    until vpnaaa_log | grep -q "IKEv2 responder on"; do
        if ! kill -0 "$DAEMON" 2>/dev/null || [ "$SECONDS" -ge "$deadline" ]; then
            fail "${label}daemon starts" \
                "no 'IKEv2 responder on' line; see twistd-$name.out and $name.log"
            tail -n 30 "$OUT/twistd-$name.out" "$DAEMON_LOG" 2>/dev/null
            return 1
        fi
        sleep 1
    done
    pass "${label}daemon starts ($(vpnaaa_log | grep -o 'IKEv2 responder on.*' | head -n 1))"
    # started as root, it runs as vpnaaa with CAP_NET_ADMIN only (what installs the SAs below)
    local status uid
    status=$(cat "/proc/$DAEMON/status")
    uid=$(id -u vpnaaa)
    check "${label}daemon runs as user vpnaaa ($uid), not root" \
        "$(grep -E '^(Uid|Gid):' <<<"$status")" \
        test "$(awk -v u="$uid" '/^Uid:/ { print ($2 == u && $3 == u && $4 == u && $5 == u) }' <<<"$status")" = 1
    check "${label}daemon keeps CAP_NET_ADMIN only (CapEff 0x1000)" \
        "$(grep -E '^Cap' <<<"$status")" \
        grep -q '^CapEff:[[:space:]]*0000000000001000$' <<<"$status"
    check "${label}kernel installer in use" "the start-up line does not say 'kernel ESP'" \
        has "$(vpnaaa_log | grep 'IKEv2 responder on')" "kernel ESP"
    # the IKE sockets bypass IPsec: per-socket policies, in and out for 500 and 4500
    check "${label}after start-up: only the IKE sockets' 4 bypass policies, no SA" \
        "$(ip -n vk-gw xfrm policy | head -c 300)" \
        test "$(policies socket)" -eq 4 -a "$(policies dir)" -eq 0 -a -z "$(ip -n vk-gw xfrm state)"
}

stop_daemon() { # [LABEL]
    local label=${1:+$1: }
    say "stopping the daemon (SIGTERM)"
    if ! kill -0 "$DAEMON" 2>/dev/null; then
        fail "${label}daemon alive at the end" "it exited before SIGTERM"
    else
        pass "${label}daemon alive at the end"
        kill -TERM "$DAEMON"
        local i
        for i in $(seq 120); do
            kill -0 "$DAEMON" 2>/dev/null || break
            sleep 0.5
        done
        if kill -0 "$DAEMON" 2>/dev/null; then
            fail "${label}daemon stops on SIGTERM" "still running after 60 s"
            kill -KILL "$DAEMON"
        else
            pass "${label}daemon stops on SIGTERM"
        fi
    fi
    wait "$DAEMON" 2>/dev/null
    check "${label}nothing left in the gateway's kernel after shutdown (no SA, no policy at all)" \
        "$(ip -n vk-gw xfrm state | head -c 300) $(ip -n vk-gw xfrm policy | head -c 300)" \
        test -z "$(ip -n vk-gw xfrm state)$(ip -n vk-gw xfrm policy)"
    local bad
    bad=$(vpnaaa_log | grep -n -E 'Traceback|Unhandled [Ee]rror|internal error' | head -n 5)
    check "${label}daemon log has no traceback" "$bad" test -z "$bad"
}

start_charon() { # NAME NS
    local name=$1 ns=$2
    mkdir -p "$RUN/$name/run"
    rm -f "$RUN/$name/charon.vici"
    say "starting charon ($name) in vk-$ns"
    STRONGSWAN_CONF=$OUT/$name/strongswan.conf ip netns exec "vk-$ns" \
        unshare -m --propagation private sh -c 'mount --bind "$1" /run && exec "$2"' \
        sh "$RUN/$name/run" /usr/lib/ipsec/charon >"$OUT/$name/charon.out" 2>&1 &
    CHARON=$!
    if ! wait_until 60 test -S "$RUN/$name/charon.vici"; then
        fail "charon ($name) starts" "no vici socket; $(tail -n 5 "$OUT/$name/charon.out")"
        return 1
    fi
    if ! sw "$name" --load-all --noprompt --file "$OUT/$name/swanctl/swanctl.conf" \
        >"$OUT/$name/load.txt" 2>&1; then
        fail "charon ($name) loads its configuration" "$(tail -n 5 "$OUT/$name/load.txt")"
        return 1
    fi
}

stop_charon() {
    kill -TERM "$CHARON" 2>/dev/null
    local i
    for i in $(seq 40); do
        kill -0 "$CHARON" 2>/dev/null || break
        sleep 0.5
    done
    kill -KILL "$CHARON" 2>/dev/null
    wait "$CHARON" 2>/dev/null
}

sw() { # NAME ARGS...: swanctl against that charon
    local name=$1
    shift
    STRONGSWAN_CONF=$OUT/$name/strongswan.conf timeout -k 5 150 \
        swanctl "$@" --uri "unix://$RUN/$name/charon.vici"
}

ping_lan() { # CLIENT-NS VIP COUNT INTERVAL OUTFILE: all answered?
    n "$1" timeout -k 5 $(($3 + 60)) ping -n -c "$3" -i "$4" -W 3 -I "$2" "$LAN_HOST" >"$5" 2>&1
    grep -q " $3 received" "$5"
}

capture_start() { # NS IFACE FILE
    local err=$RUN/tcpdump-$2.err
    # not through a function: $! must be tcpdump itself (ip netns exec execs it)
    ip netns exec "vk-$1" tcpdump -i "$2" -Q out -n -U -Z root -w "$3" 2>"$err" &
    CAPTURES="${CAPTURES:-} $!"
    wait_until 30 grep -q "listening on" "$err"
}

capture_stop() {
    sleep 1
    local pid
    # SIGTERM: background jobs of a non-interactive shell ignore SIGINT
    for pid in ${CAPTURES:-}; do kill -TERM "$pid" 2>/dev/null; done
    for pid in ${CAPTURES:-}; do wait "$pid" 2>/dev/null; done
    CAPTURES=""
}

count() { tcpdump -r "$1" -n "$2" 2>/dev/null | wc -l; }

# tcpdump filters: what may leave a client-link interface while pings run (besides ARP).
# Both ends send ESP-in-UDP from their own port 4500 (RFC 3948 §2.1).
ESP_PLAIN="ip proto 50"
ESP_NAT="udp src port 4500 and udp[8:4] != 0"                   # ESP in UDP, not IKE
KEEPALIVE="udp src port 4500 and udp[4:2] = 9 and udp[8] = 0xff" # NAT-T keepalive

check_capture() { # CASE FILE SIDE ESP-FILTER: only ESP, at least 5 packets, no ICMP
    local case=$1 file=$2 side=$3 esp=$4
    local total esp_n icmp arp other
    total=$(count "$file" "")
    esp_n=$(count "$file" "$esp")
    icmp=$(count "$file" "icmp")
    arp=$(count "$file" "arp")
    other=$(count "$file" "not arp and not ($esp) and not ($KEEPALIVE)")
    tcpdump -r "$file" -n -v >"${file%.pcap}.txt" 2>&1
    check "$case: $side -Q out during ping: only ESP ($esp_n ESP, $arp ARP, 0 ICMP)" \
        "esp=$esp_n icmp=$icmp arp=$arp other=$other of $total; see ${file%.pcap}.txt" \
        test "$esp_n" -ge 5 -a "$icmp" -eq 0 -a "$other" -eq 0
}

check_decrypted() { # CASE FILE SIDE ICMP-TYPE: tshark reads the ESP with vpnaaa's esp_sa
    local case=$1 file=$2 side=$3 type=$4 keys=$STATE/keylog n mode
    n=$(WIRESHARK_CONFIG_DIR="$keys" tshark -n -r "$file" -o esp.enable_encryption_decode:TRUE \
        -Y "esp && icmp.type == $type" 2>/dev/null | wc -l)
    check "$case: tshark decrypts the $side ESP with the key log ($n ICMP type $type)" \
        "see $keys/esp_sa and $file" test "$n" -ge 5
    mode=$(stat -c '%a %U' "$keys/esp_sa" "$keys/ikev2_decryption_table" | sort -u)
    check "$case: key log files are mode 600, the daemon user's" "$mode" test "$mode" = "600 vpnaaa"
}

sa_pair_ok() { # CASE CLIENT-NS ENCAP(0/1) REMOTE: two SAs, our reqid, the client's SPIs
    local case=$1 ns=$2 encap=$3 remote=$4 lines
    lines=$(gw_sas)
    local reqids
    reqids=$(echo "$lines" | awk -v lo=$REQID_BASE -v hi=$REQID_END \
        '$4 >= lo && $4 < hi { print $4 }' | sort -u | wc -l)
    check "$case: gateway holds the CHILD_SA's two SAs, one vpnaaa reqid" "$lines" \
        test "$(echo "$lines" | grep -c .)" -eq 2 -a "$reqids" -eq 1
    check "$case: gateway SPIs = client SPIs ($(spis gw))" "client: $(spis "$ns")" \
        test "$(spis gw)" = "$(spis "$ns")"
    check "$case: SA endpoints are the gateway and $remote" "$lines" \
        test "$(echo "$lines" | awk -v r="$remote" '($1 == r) != ($2 == r)' | wc -l)" -eq 2
    local what="no UDP encapsulation"
    [ "$encap" = 1 ] && what="both SAs UDP-encapsulated, ports 4500/4500 (espinudp)"
    check "$case: $what" "$lines" \
        test "$(echo "$lines" | awk -v e="$encap" '$7 == e' | wc -l)" -eq 2
    check "$case: in, fwd and out policies installed" "$(ip -n vk-gw xfrm policy)" \
        test "$(policies dir)" -eq 3
}

replaced() { # OLD-SPIS: the gateway holds two SAs again and none of these
    local now
    now=$(spis gw)
    [ "$(echo "$now" | wc -w)" -eq 2 ] && [ -z "$(comm -12 <(echo "$1" | tr ' ' '\n' |
        sort) <(echo "$now" | tr ' ' '\n' | sort) | grep .)" ]
}

bytes_by_spi() { gw_sas | awk '{ print $3, $5, $6 }' | sort; }

counters_grow() { # BEFORE AFTER: every SA's bytes grew
    join <(echo "$1") <(echo "$2") | awk '$4 > $2 { n++ } END { exit !(n == 2) }'
}

connect() { # CASE CLIENT-NAME NS: the CHILD_SA "net" up; VIP := the client's virtual IP
    local case=$1 name=$2 ns=$3
    VIP=""
    say "$case: swanctl --initiate --child net"
    sw "$name" --initiate --child net --timeout 120 >"$OUT/$name/initiate.txt" 2>&1
    if ! grep -q "initiate completed successfully" "$OUT/$name/initiate.txt"; then
        fail "$case: EAP-MSCHAPv2 connection established" \
            "$(tail -n 5 "$OUT/$name/initiate.txt" | tr '\n' ' ')"
        return 1
    fi
    pass "$case: EAP-MSCHAPv2 connection established"
    VIP=$(ip -n "vk-$ns" -4 -o addr show | awk -v p="$POOL_PREFIX" \
        'index($4, p) == 1 { split($4, a, "/"); print a[1]; exit }')
    check "$case: client has a virtual IP from the pool ($VIP)" "none" test -n "$VIP"
    [ -n "$VIP" ]
}

client_case() { # CASE CLIENT-NAME NS REMOTE ENCAP IFACE-GW IFACE-CLIENT ESP-FILTER
    local case=$1 name=$2 ns=$3 remote=$4 encap=$5 gwif=$6 clif=$7 esp=$8
    start_charon "$name" "$ns" || return 1
    connect "$case" "$name" "$ns" || {
        stop_charon
        return 1
    }
    local vip=$VIP
    sa_pair_ok "$case" "$ns" "$encap" "$remote"
    dump_xfrm "$name-up"

    say "$case: ping $LAN_HOST from $vip, capturing on $gwif and $clif"
    capture_start gw "$gwif" "$OUT/$name-gw-out.pcap"
    capture_start "$ns" "$clif" "$OUT/$name-client-out.pcap"
    check "$case: ping -c 5 from the virtual IP through the tunnel" \
        "$(tail -n 2 "$OUT/$name-ping1.txt" 2>/dev/null)" \
        ping_lan "$ns" "$vip" 5 0.5 "$OUT/$name-ping1.txt"
    capture_stop
    check_capture "$case" "$OUT/$name-gw-out.pcap" "gateway $gwif" "$esp"
    check_capture "$case" "$OUT/$name-client-out.pcap" "client $clif" "$esp"
    check_decrypted "$case" "$OUT/$name-gw-out.pcap" "gateway's" 0      # echo replies
    check_decrypted "$case" "$OUT/$name-client-out.pcap" "client's" 8   # echo requests

    local before after
    before=$(bytes_by_spi)
    check "$case: both SAs counted the pings (packets >= 5)" "$before" \
        test "$(echo "$before" | awk '$3 >= 5 && $2 > 0' | wc -l)" -eq 2
    ping_lan "$ns" "$vip" 5 0.5 "$OUT/$name-ping2.txt"
    after=$(bytes_by_spi)
    check "$case: byte counters grow with a second ping" "before: $before; after: $after" \
        counters_grow "$before" "$after"
    dump_xfrm "$name-counted"

    say "$case: swanctl --rekey --child net during a 60-packet ping"
    local old_spis old_reqid
    old_spis=$(spis gw)
    old_reqid=$(gw_sas | awk '{ print $4 }' | sort -u)
    n "$ns" timeout -k 5 120 ping -n -c 60 -i 0.25 -W 3 -I "$vip" "$LAN_HOST" \
        >"$OUT/$name-ping-rekey.txt" 2>&1 &
    local pinger=$!
    sleep 2
    sw "$name" --rekey --child net >"$OUT/$name/rekey.txt" 2>&1
    check "$case: rekey replaced both SAs (old: $old_spis)" "now: $(spis gw)" \
        wait_until 60 replaced "$old_spis"
    wait "$pinger"
    check "$case: no ping lost across the rekey" "$(tail -n 2 "$OUT/$name-ping-rekey.txt")" \
        grep -q " 60 received" "$OUT/$name-ping-rekey.txt"
    check "$case: the rekeyed CHILD_SA keeps its reqid ($old_reqid)" "$(gw_sas)" \
        test "$(gw_sas | awk '{ print $4 }' | sort -u)" = "$old_reqid"
    sa_pair_ok "$case after rekey" "$ns" "$encap" "$remote"
    before=$(bytes_by_spi)
    check "$case: ping through the new SAs" "$(tail -n 2 "$OUT/$name-ping3.txt" 2>/dev/null)" \
        ping_lan "$ns" "$vip" 5 0.5 "$OUT/$name-ping3.txt"
    after=$(bytes_by_spi)
    check "$case: the new SAs count it" "before: $before; after: $after" \
        counters_grow "$before" "$after"
    dump_xfrm "$name-rekeyed"

    if [ "$name" = plain ]; then
        bad_child "$case" "$name" "$ns" "$vip"
    fi

    say "$case: swanctl --terminate --ike vpnaaa"
    sw "$name" --terminate --ike vpnaaa --timeout 60 >"$OUT/$name/terminate.txt" 2>&1
    check "$case: terminate completed" "$(tail -n 3 "$OUT/$name/terminate.txt" | tr '\n' ' ')" \
        grep -q "terminate completed successfully" "$OUT/$name/terminate.txt"
    check "$case: no SA and no policy left on the gateway" \
        "$(ip -n vk-gw xfrm state | head -c 200) $(ip -n vk-gw xfrm policy | head -c 300)" \
        wait_until 30 gw_empty
    check "$case: the IKE sockets' bypass policies remain" "" test "$(policies socket)" -eq 4
    local stop pinged
    stop=$(accounting_stop)
    pinged=$(answered "$OUT/$name-ping1.txt" "$OUT/$name-ping2.txt" "$OUT/$name-ping-rekey.txt" \
        "$OUT/$name-ping3.txt" "$OUT/$name-ping4.txt")
    check "$case: the accounting Stop counts every ping, before and after the rekey ($pinged answered: in/out packets >= that)" \
        "$stop" stop_counts "$stop" "$pinged"
    dump_xfrm "$name-terminated"
    stop_charon
}

accounting_stop() { # the last Stop of the local accounting log: in/out packets, in/out octets
    "$VENV/bin/python" - "$STATE/accounting.log" <<'EOF'
import json, sys
stops = [json.loads(line)["attributes"] for line in open(sys.argv[1]) if '"Stop"' in line]
names = ("Acct-Input-Packets", "Acct-Output-Packets", "Acct-Input-Octets", "Acct-Output-Octets")
print(*(stops[-1].get(name, [-1])[0] if stops else -1 for name in names))
EOF
}

answered() { # PING-OUTPUT...: the echo replies they got, summed (a missing file counts 0)
    cat "$@" 2>/dev/null | awk '{ for (i = 2; i <= NF; i++) if ($i == "received,") n += $(i - 1) }
        END { print n + 0 }'
}

stop_counts() { # STOP N: the Stop (accounting_stop) has >= N packets each way, octets > 0
    test "$(awk -v n="$2" '$1 >= n && $2 >= n && $3 > 0 && $4 > 0' <<<"$1" | wc -l)" -eq 1 \
        -a "$2" -gt 0
}

accounting_ends() { # the Acct-Status-Type of the local accounting log's first and last records
    "$VENV/bin/python" - "$STATE/accounting.log" <<'EOF'
import json, sys
kinds = [json.loads(line)["attributes"]["Acct-Status-Type"][0] for line in open(sys.argv[1])]
print(kinds[0] if kinds else "none", kinds[-1] if kinds else "none")
EOF
}

bad_child() { # CASE NAME NS VIP: a second CHILD_SA whose algorithm the kernel lacks
    local case=$1 name=$2 ns=$3 vip=$4
    say "$case: a second CHILD_SA with ChaCha20-Poly1305, which this kernel cannot load"
    local spis_before lines_before
    spis_before=$(spis gw)
    lines_before=$(vpnaaa_log | wc -l)
    sw "$name" --initiate --child bad --timeout 20 >"$OUT/$name/initiate-bad.txt" 2>&1
    check "$case: the refused CHILD_SA is not established" \
        "$(tail -n 3 "$OUT/$name/initiate-bad.txt" | tr '\n' ' ')" \
        not grep -q "initiate completed successfully" "$OUT/$name/initiate-bad.txt"
    local notify
    notify=$(grep -oE 'received (TEMPORARY_FAILURE|NO_PROPOSAL_CHOSEN|TS_UNACCEPTABLE)[^,]* notify' \
        "$OUT/$name/charon.log" | head -n 1)
    check "$case: the client got a notify for it (${notify:-none})" \
        "no TEMPORARY_FAILURE/NO_PROPOSAL_CHOSEN in charon.log" test -n "$notify"
    local line
    line=$(vpnaaa_log | tail -n +"$((lines_before + 1))" | grep 'not installed' | head -n 1)
    check "$case: vpnaaa logs the kernel's refusal" "no 'not installed' line" \
        test -n "$line"
    [ -n "$line" ] && say "  log: ${line:0:300}"
    check "$case: ... naming the missing algorithm" "$line" has "$line" algorithm
    check "$case: daemon still running" "" kill -0 "$DAEMON"
    check "$case: the first CHILD_SA's SAs are untouched" "now: $(spis gw)" \
        test "$(spis gw)" = "$spis_before"
    check "$case: and still carry the ping" "$(tail -n 2 "$OUT/$name-ping4.txt" 2>/dev/null)" \
        ping_lan "$ns" "$vip" 3 0.5 "$OUT/$name-ping4.txt"
    dump_xfrm "$name-bad"
}

# --- the gateway speaks first: liveness checks, dead peers, hard lifetimes -----------------

CLIENT_PLAIN=198.51.100.2 # the plain client's address, as the gateway sees it
CLIENT_NAT=198.51.100.130 # the NAT's outer address, where the NAT-T client appears from
PROBE='parsed INFORMATIONAL request [0-9]+ \[ \]' # charon: an empty INFORMATIONAL arrived
PROBE_ANSWER='generating INFORMATIONAL response [0-9]+ \[ \]'
RETRANSMIT='received retransmit of request with ID'

sas_of() { gw_sas | awk -v a="$1" '$1 == a || $2 == a' | wc -l; } # ADDRESS: SAs to/from it

policies_of() { # ADDRESS VIP: the gateway's in/out/fwd policies naming the one or the other
    ip -n vk-gw xfrm policy | awk -v a=" $1 " -v v=" $2/32 " '
        function flush() {
            if (block ~ /[[:space:]]dir (in|out|fwd)[[:space:]]/ &&
                (index(block, a) || index(block, v))) n++
        }
        /^src / { flush(); block = "" }
        { block = block " " $0 " " }
        END { flush(); print n + 0 }'
}

charon_count() { grep -cE -- "$2" "$OUT/$1/charon.log"; } # NAME PATTERN

log_seconds() { # NAME PATTERN: the second of the day of charon's first line matching PATTERN
    grep -m 1 -E -- "$2" "$OUT/$1/charon.log" |
        awk '{ split($1, t, ":"); print t[1] * 3600 + t[2] * 60 + t[3] }'
}

lifecycle() { # bob (plain) busy, idle, then silenced; alice (NAT-T) until her hard lifetime
    start_charon dpd cl || return 1
    local dpd_charon=$CHARON
    if start_charon expiry ncl; then
        liveness_and_expiry
        stop_charon
    fi
    CHARON=$dpd_charon
    stop_charon
}

liveness_and_expiry() {
    # alice first: bob's checks run within her CHILD_SA's lifetime
    connect "hard lifetime" expiry ncl || return 1
    local vip_expiry=$VIP installed=$SECONDS
    connect "liveness" dpd cl || return 1
    local vip_dpd=$VIP
    local earliest=$((LC_CHILD_LIFETIME * 9 / 10)) spi_in limits # the hard lifetime's
    spi_in=$(gw_sas | awk -v c=$CLIENT_NAT -v g=$GW_NAT \
        '$1 == c && $2 == g { sub(/^0x/, "", $3); print $3 }') # what the gateway's DELETE names
    # soft at 80-90 % of child_lifetime, hard 10 % later (jitter: config.py's lifetimes)
    limits=$(ip -n vk-gw -s xfrm state | awk -v l=$LC_CHILD_LIFETIME '
        /expire add:/ { gsub(/[^0-9 ]/, " "); soft = $1; hard = $2
            if (soft >= int(l * 0.8) && soft <= l * 0.9 && hard >= int(l * 0.9) &&
                hard <= l && hard - soft >= int(l * 0.1) - 1 && hard - soft <= l * 0.1 + 1) n++ }
        END { print n + 0 }')
    check "lifecycle: the kernel holds soft 80-90 % / hard 90-100 % of $LC_CHILD_LIFETIME s on all 4 SAs" \
        "$limits SAs with those limits: $(ip -n vk-gw -s xfrm state | grep 'expire add')" \
        test "$limits" -eq 4 -a "$(gw_sas | wc -l)" -eq 4
    dump_xfrm lifecycle-up

    # a busy tunnel: inbound ESP counts as heard, no liveness request in 4 x dpd_delay
    local count=$((LC_DPD * 8)) probes idle_probes
    say "liveness: $((count / 2)) s of pings from $vip_dpd (dpd_delay $LC_DPD s)"
    ping_lan cl "$vip_dpd" "$count" 0.5 "$OUT/dpd-busy.txt" &
    local pinger=$!
    sleep 3 # ESP flowing; a request sent just before would be in charon's log by now
    probes=$(charon_count dpd "$PROBE")
    idle_probes=$(charon_count expiry "$PROBE")
    wait "$pinger"
    idle_probes=$(($(charon_count expiry "$PROBE") - idle_probes))
    check "liveness: $count pings through the busy tunnel, all answered" \
        "$(tail -n 2 "$OUT/dpd-busy.txt")" grep -q " $count received" "$OUT/dpd-busy.txt"
    local name="liveness: a busy tunnel is not probed"
    check "$name (no request at the client in $((count / 2 - 3)) s)" \
        "$(($(charon_count dpd "$PROBE") - probes)) in dpd/charon.log" \
        test "$(charon_count dpd "$PROBE")" -eq "$probes"
    check "liveness: ... while alice's idle tunnel was probed meanwhile ($idle_probes requests)" \
        "expiry/charon.log" test "$idle_probes" -ge 2

    # idle: a liveness request within 2 x dpd_delay, answered
    local answers
    answers=$(charon_count dpd "$PROBE_ANSWER")
    probed() { [ "$(charon_count dpd "$PROBE_ANSWER")" -gt "$answers" ]; }
    check "liveness: the idle tunnel is probed and charon answers" \
        "no new '$PROBE_ANSWER' in dpd/charon.log" wait_until $((2 * LC_DPD + 20)) probed
    probe_logged() { vpnaaa_log | grep -qE "$CLIENT_PLAIN:[0-9]+ .*liveness #[0-9]+ answered"; }
    check "liveness: vpnaaa logs the answer" "no 'liveness #N answered' for $CLIENT_PLAIN" \
        wait_until 15 probe_logged

    # silenced: nothing from the client reaches the gateway (no DELETE either)
    say "liveness: silencing the client (nftables in vk-cl: drop everything to $GW_PLAIN)"
    local requests retransmits
    requests=$(charon_count dpd "$PROBE")
    retransmits=$(charon_count dpd "$RETRANSMIT")
    n cl nft -f - <<EOF || fail "liveness: nftables rule in vk-cl" "nft refused it"
table inet vk-silence {
  chain output {
    type filter hook output priority filter; policy accept;
    ip daddr $GW_PLAIN drop
  }
}
EOF
    local silenced=$SECONDS waits bound elapsed
    # seconds from the first liveness request to the give-up: timeout * base^n, n = 0..tries
    waits=$(awk -v t=$LC_RT_TIMEOUT -v b=$LC_RT_BASE -v n=$LC_RT_TRIES \
        'BEGIN { for (i = 0; i <= n; i++) s += t * b ^ i; printf "%d", s + 0.999 }')
    bound=$((LC_DPD + 1 + waits + 20)) # the timer's 1 s reschedule, and TCG's slowness
    gone() {
        [ "$(sas_of $CLIENT_PLAIN)" -eq 0 ] && [ "$(policies_of $CLIENT_PLAIN "$vip_dpd")" -eq 0 ]
    }
    wait_until $((bound + 60)) gone
    elapsed=$((SECONDS - silenced))
    dump_xfrm lifecycle-silenced
    check "liveness: silenced client: none of its SAs left on the gateway (src/dst $CLIENT_PLAIN)" \
        "$(gw_sas)" test "$(sas_of $CLIENT_PLAIN)" -eq 0
    check "liveness: silenced client: none of its policies left (tmpl $CLIENT_PLAIN, $vip_dpd)" \
        "$(ip -n vk-gw xfrm policy | head -c 600)" \
        test "$(policies_of $CLIENT_PLAIN "$vip_dpd")" -eq 0
    name="liveness: removed ${elapsed} s after the silence (dpd_delay $LC_DPD s + retransmissions"
    check "$name $waits s: at most $bound s)" "" test "$elapsed" -le "$bound"
    local end
    end=$(vpnaaa_log | grep -E "$CLIENT_PLAIN:[0-9]+ .*session of 'bob' ended: " | tail -n 1)
    [ -n "$end" ] && say "  log: ${end:0:300}"
    local cause="dead peer (no answer to $((LC_RT_TRIES + 1)) liveness requests)"
    check "liveness: the daemon logs the session's end: $cause" \
        "${end:-no line \"session of 'bob' ended\"}" has "$end" "ended: $cause"
    local seen="requests $requests -> $(charon_count dpd "$PROBE")"
    seen="$seen, retransmits $retransmits -> $(charon_count dpd "$RETRANSMIT")"
    check "liveness: the silenced client received the request and its retransmissions" "$seen" \
        test "$(charon_count dpd "$PROBE")" -gt "$requests" -a \
        "$(charon_count dpd "$RETRANSMIT")" -ge $((retransmits + LC_RT_TRIES))
    n cl nft delete table inet vk-silence # vk-cl speaks again (the gateway rekey phase)
    check "hard lifetime: alice's session untouched by bob's end (2 SAs, 3 policies)" "$(gw_sas)" \
        test "$(sas_of $CLIENT_NAT)" -eq 2 -a "$(policies_of $CLIENT_NAT "$vip_expiry")" -eq 3

    # alice's CHILD_SA reaches its hard lifetime: removed, and the client told with a DELETE
    say "hard lifetime: waiting for it ($((installed + LC_CHILD_LIFETIME - SECONDS)) s from now)"
    deleted() {
        grep -q "received DELETE for ESP CHILD_SA with SPI $spi_in" "$OUT/expiry/charon.log"
    }
    check "hard lifetime: charon logs the gateway's DELETE for the CHILD_SA (SPI $spi_in)" \
        "$(grep -E 'DELETE|closing' "$OUT/expiry/charon.log" | tail -n 3 | tr '\n' ' ')" \
        wait_until $((installed + LC_CHILD_LIFETIME + 60 - SECONDS)) deleted
    elapsed=$((SECONDS - installed))
    name="hard lifetime: ... at the hard lifetime, not the soft one"
    check "$name ($elapsed s after connecting)" "" test "$elapsed" -ge "$earliest"
    alice_gone() {
        [ "$(sas_of $CLIENT_NAT)" -eq 0 ] && [ "$(policies_of $CLIENT_NAT "$vip_expiry")" -eq 0 ]
    }
    check "hard lifetime: none of the CHILD_SA's SAs and policies left on the gateway" \
        "$(gw_sas) $(ip -n vk-gw xfrm policy | head -c 600)" wait_until 30 alice_gone
    check "hard lifetime: nothing left on the gateway (no SA, no in/out/fwd policy)" \
        "$(ip -n vk-gw xfrm state | head -c 300)" gw_empty
    dump_xfrm lifecycle-expired
    local line
    line=$(vpnaaa_log | grep "CHILD_SA $spi_in deleted: " | head -n 1)
    [ -n "$line" ] && say "  log: ${line:0:300}"
    check "hard lifetime: vpnaaa logs the deletion at the hard lifetime" "${line:-none}" \
        has "$line" "hard lifetime reached"
    client_clean() { [ -z "$(ip -n vk-ncl xfrm state)" ]; }
    check "hard lifetime: the client removed the CHILD_SA too (no SA in vk-ncl)" \
        "$(ip -n vk-ncl xfrm state | head -c 300)" wait_until 20 client_clean
}

# --- the gateway rekeys: rekey = "gateway", both lifetimes at their minimum ----------------

CHILD_REKEY='parsed CREATE_CHILD_SA request [0-9]+ \[ N\(REKEY_SA\)' # charon: a CHILD_SA rekey asked
IKE_REKEYED='IKE_SA vpnaaa\[[0-9]+\] rekeyed between'                 # charon: its IKE_SA rekeyed
OWN_REQUEST='generating CREATE_CHILD_SA request'                       # charon rekeying itself

gateway_rekeys() { # alice plain: the gateway rekeys her CHILD_SA and IKE SA under a ping
    start_charon rekey cl || return 1
    if connect "gateway rekey" rekey cl; then
        rekey_under_ping
    fi
    stop_charon
}

rekey_under_ping() {
    local case="gateway rekey" installed=$SECONDS vip=$VIP
    local soft_min=$((RK_LIFETIME * 8 / 10)) soft_max=$((RK_LIFETIME * 9 / 10))
    sa_pair_ok "$case" cl 0 "$GW_PLAIN"
    dump_xfrm rekey-up
    local old_spis old_reqid
    old_spis=$(spis gw)
    old_reqid=$(gw_sas | awk '{ print $4 }' | sort -u)
    # a ping every 0.25 s from now until 12 s after the latest soft lifetime (charon keeps the
    # old inbound SA 5 s after the rekey: gone by then)
    local count=$(((installed + soft_max + 12 - SECONDS) * 4))
    say "$case: $count pings from $vip; the gateway rekeys $soft_min-$soft_max s after connecting"
    ping_lan cl "$vip" "$count" 0.25 "$OUT/rekey-ping.txt" &
    local pinger=$!
    check "$case: the gateway replaced both SAs (old: $old_spis)" "now: $(spis gw)" \
        wait_until $((soft_max + 40)) replaced "$old_spis"
    check "$case: ... while the ping ran" "the ping had ended ($(tail -n 2 "$OUT/rekey-ping.txt"))" \
        kill -0 "$pinger"
    # charon's clock: from its CHILD_SA's start to the gateway's request (whole seconds)
    local up asked at
    up=$(log_seconds rekey 'CHILD_SA net\{1\} established with SPIs')
    asked=$(log_seconds rekey "$CHILD_REKEY")
    at=$(((${asked:-0} - ${up:-0} + 86400) % 86400))
    check "$case: ... at the soft lifetime ($at s after the CHILD_SA came up: $soft_min-$soft_max)" \
        "established at ${up:-?}, rekey asked at ${asked:-?} (seconds of the day)" \
        test -n "$up" -a -n "$asked" -a "$at" -ge $((soft_min - 1)) -a "$at" -le $((soft_max + 2))
    wait "$pinger"
    check "$case: no ping lost across the gateway's rekeys" "$(tail -n 2 "$OUT/rekey-ping.txt")" \
        grep -q " $count received" "$OUT/rekey-ping.txt"
    dump_xfrm rekey-rekeyed
    check "$case: the new CHILD_SA keeps its reqid ($old_reqid)" "$(gw_sas)" \
        test "$(gw_sas | awk '{ print $4 }' | sort -u)" = "$old_reqid"
    sa_pair_ok "$case: after the rekey" cl 0 "$GW_PLAIN"
    check "$case: both new SAs carried pings" "$(gw_sas)" \
        test "$(gw_sas | awk '$6 > 0' | wc -l)" -eq 2
    check "$case: charon received the gateway's CREATE_CHILD_SA with N(REKEY_SA)" \
        "none in rekey/charon.log" test "$(charon_count rekey "$CHILD_REKEY")" -ge 1
    check "$case: charon's IKE_SA was rekeyed too (ike_lifetime $RK_LIFETIME s)" \
        "no '$IKE_REKEYED' in rekey/charon.log" test "$(charon_count rekey "$IKE_REKEYED")" -ge 1
    check "$case: ... every rekey the gateway's (charon sent no CREATE_CHILD_SA request)" \
        "$(grep -c "$OWN_REQUEST" "$OUT/rekey/charon.log")" \
        test "$(charon_count rekey "$OWN_REQUEST")" -eq 0
    local ends
    ends=$(vpnaaa_log | grep -E "session of 'alice' ended: ")
    check "$case: the session did not end across the rekeys" "$ends" test -z "$ends"

    say "$case: swanctl --terminate --ike vpnaaa"
    sw rekey --terminate --ike vpnaaa --timeout 60 >"$OUT/rekey/terminate.txt" 2>&1
    check "$case: terminate completed" "$(tail -n 3 "$OUT/rekey/terminate.txt" | tr '\n' ' ')" \
        grep -q "terminate completed successfully" "$OUT/rekey/terminate.txt"
    check "$case: no SA and no policy left on the gateway" \
        "$(ip -n vk-gw xfrm state | head -c 200) $(ip -n vk-gw xfrm policy | head -c 300)" \
        wait_until 30 gw_empty
    dump_xfrm rekey-terminated
    ends=$(vpnaaa_log | grep -E "session of 'alice' ended: ")
    [ -n "$ends" ] && say "  log: ${ends:0:300}"
    check "$case: one session end, by the client's delete" "$ends" \
        test "$(grep -c . <<<"$ends")" -eq 1 -a -n "$(grep "ended: client delete" <<<"$ends")"
    local stop pinged
    stop=$(accounting_stop)
    pinged=$(answered "$OUT/rekey-ping.txt")
    check "$case: the accounting Stop counts every ping across the gateway's rekeys ($pinged answered: in/out packets >= that)" \
        "$stop" stop_counts "$stop" "$pinged"
}

run() {
    mkdir -p "$RUN"
    : >"$RESULTS"
    say "kernel $(uname -r); $(ip -V)"
    modprobe -a esp4 xfrm_user veth nf_tables nft_chain_nat nft_masq 2>&1 | head -n 5
    # a kernel without ChaCha20-Poly1305 (CONFIG_CRYPTO_CHACHA20POLY1305 unset): block the
    # module before anything loads it (/etc is a writable overlay in the VM)
    if ! lsmod | grep -q '^chacha20poly1305 '; then
        echo "install chacha20poly1305 /bin/false" >/etc/modprobe.d/vk-no-chacha20poly1305.conf
    fi
    if ! topology; then
        fail "network namespaces and links" "see the console"
        return
    fi
    pass "network namespaces, links, NAT"
    start_daemon vpnaaa || return
    client_case "plain" plain cl "$GW_PLAIN" 0 gw-c c-gw "$ESP_PLAIN"
    client_case "NAT-T" nat ncl $CLIENT_NAT 1 gw-n c-n "$ESP_NAT"
    stop_daemon
    check "accounting: Accounting-On first, Accounting-Off last (after every Stop)" \
        "$(accounting_ends)" test "$(accounting_ends)" = "Accounting-On Accounting-Off"
    start_daemon vpnaaa-lifecycle || return
    lifecycle
    stop_daemon lifecycle
    start_daemon vpnaaa-rekey || return
    gateway_rekeys
    stop_daemon rekey
}

cleanup() {
    local ns
    for ns in gw cl lan nat ncl; do
        ip netns pids "vk-$ns" 2>/dev/null | xargs -r kill -KILL 2>/dev/null
        ip netns del "vk-$ns" 2>/dev/null
    done
}

case "$MODE" in
prepare)
    prepare || {
        echo "prepare failed" >&2
        exit 1
    }
    ;;
run)
    run
    cleanup
    echo "kernel-vm: $PASSED passed, $FAILED failed"
    echo "kernel-vm: $PASSED passed, $FAILED failed" >>"$RESULTS"
    [ "$FAILED" -eq 0 ] && [ "$PASSED" -gt 0 ]
    ;;
*)
    echo "usage: $0 prepare|run OUT" >&2
    exit 2
    ;;
esac
