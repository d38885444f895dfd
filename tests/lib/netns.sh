#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# A two-host emulation on one machine: the "partner host" is a network
# namespace behind a veth pair, the link shaped with tc tbf (token bucket)
# in both directions.  Used by the migrate tests (source this file or run
# it) and by bench/migrate.py (which runs it).
#
#   netns.sh up NAME RATE     create namespace NAME (at most 10 characters,
#                             e.g. vbdn$$) and its link: veth NAME-h on the
#                             host, NAME-n in the namespace, a /24 of
#                             10.99.0.0/16 that no other interface uses, each
#                             end shaped to RATE on egress (tc's units:
#                             10gbit, 1gbit, 100mbit; "none": not shaped).
#                             Prints shell assignments: NETNS= HOST_ADDR=
#                             NS_ADDR= HOST_IF= NS_IF= RATE=.  Removes what it
#                             made if a step fails (or it is killed).
#   netns.sh down NAME        remove namespace NAME and its link (the host
#                             end of a veth goes with its peer); quiet and
#                             0 if there is nothing to remove
#   netns.sh check            0 if namespaces can be made here (root, ip,
#                             tc, veth, tbf), else 1 with the reason on stderr
#   netns.sh wait-tcp NAME ADDR PORT [SECS] [PID]
#                             wait until ADDR:PORT (in namespace NAME)
#                             accepts a TCP connection from the host, across
#                             the link (default 30 s); 1 if not, or if PID
#                             exits first
#
# Run a program on the partner host with `ip netns exec NAME PROGRAM ...`:
# ip execs it, so its pid is the program's (its CPU time is its own in /proc).
# Sourced, the file defines netns_up/netns_down/netns_check/netns_wait_tcp
# (same arguments; netns_up sets the variables rather than printing them).
# The kernel here may lack netem, so there is no added delay; the latency
# is the veth's (microseconds) plus the queueing the shaper adds.

_NETNS_LOCK=${NETNS_LOCK:-/run/lock/vbd-netns.lock}

netns_check() {
        local n=vbdchk$$
        [ "$(id -u)" = 0 ] || { echo "netns: not root" >&2; return 1; }
        command -v ip >/dev/null || { echo "netns: no ip (iproute2)" >&2; return 1; }
        command -v tc >/dev/null || { echo "netns: no tc (iproute2)" >&2; return 1; }
        if ! ip netns add "$n" 2>/dev/null; then
                echo "netns: cannot create a network namespace" >&2
                return 1
        fi
        if ! ip link add "$n-h" type veth peer name "$n-n" netns "$n" 2>/dev/null; then
                ip netns del "$n" 2>/dev/null
                echo "netns: cannot create a veth pair" >&2
                return 1
        fi
        if ! tc qdisc add dev "$n-h" root tbf rate 1gbit burst 256kb latency 50ms 2>/dev/null; then
                ip link del "$n-h" 2>/dev/null
                ip netns del "$n" 2>/dev/null
                echo "netns: no tc tbf qdisc" >&2
                return 1
        fi
        ip link del "$n-h" 2>/dev/null
        ip netns del "$n" 2>/dev/null
        return 0
}

# _netns_free_net: a third octet N such that no interface has 10.99.N.x
_netns_free_net() {
        local used n
        used=$(ip -o -4 addr show 2>/dev/null | sed -n 's/.* inet 10\.99\.\([0-9]*\)\..*/\1/p')
        for n in $(seq 0 255); do
                printf '%s\n' $used | grep -qx "$n" || { echo "$n"; return 0; }
        done
        return 1
}

# _netns_burst RATE: a token bucket for RATE: 1 ms of it, at least 256 KiB
# (a veth sends GSO packets of up to 64 KiB; a bucket smaller than a packet
# drops it)
_netns_burst() {
        local r=$1 n unit bps
        n=${r%%[a-zA-Z]*}
        unit=${r#"$n"}
        case $unit in
        gbit) bps=$((n * 1000000000)) ;;
        mbit) bps=$((n * 1000000)) ;;
        kbit) bps=$((n * 1000)) ;;
        bit | "") bps=$n ;;
        *)
                echo "netns: rate '$r': use NNgbit, NNmbit or NNkbit" >&2
                return 1
                ;;
        esac
        [ "$bps" -gt 0 ] 2>/dev/null || { echo "netns: bad rate '$r'" >&2; return 1; }
        local b=$((bps / 8 / 1000))
        [ $b -lt 262144 ] && b=262144
        echo $b
}

_netns_up() {
        local name=$1 rate=$2 net burst
        if [ ${#name} -gt 10 ] || ! [[ $name =~ ^[A-Za-z0-9_]+$ ]]; then
                echo "netns: name '$name': letters, digits, _; at most 10" >&2
                return 1
        fi
        if [ "$rate" != none ]; then
                burst=$(_netns_burst "$rate") || return 1
        fi
        ip netns add "$name" || return 1
        # The subnet is picked and taken under a lock: several tests may
        # set up their links at once.
        exec {_netns_fd}>>"$_NETNS_LOCK" || return 1
        flock "$_netns_fd"
        if ! net=$(_netns_free_net); then
                echo "netns: no free 10.99.N.0/24" >&2
                exec {_netns_fd}>&-
                return 1
        fi
        ip link add "$name-h" type veth peer name "$name-n" netns "$name" &&
                ip addr add "10.99.$net.1/24" dev "$name-h" &&
                ip -n "$name" addr add "10.99.$net.2/24" dev "$name-n"
        local rc=$?
        exec {_netns_fd}>&- # (closing it unlocks)
        [ $rc = 0 ] || return 1
        ip link set "$name-h" up &&
                ip -n "$name" link set lo up &&
                ip -n "$name" link set "$name-n" up || return 1
        if [ "$rate" != none ]; then
                tc qdisc add dev "$name-h" root tbf rate "$rate" burst "$burst" latency 20ms &&
                        tc -n "$name" qdisc add dev "$name-n" root tbf rate "$rate" \
                                burst "$burst" latency 20ms || return 1
        fi
        NETNS=$name
        HOST_ADDR=10.99.$net.1
        NS_ADDR=10.99.$net.2
        HOST_IF=$name-h
        NS_IF=$name-n
        RATE=$rate
}

netns_down() {
        ip link del "$1-h" 2>/dev/null
        ip netns del "$1" 2>/dev/null
        return 0
}

netns_up() {
        [ $# = 2 ] || { echo "usage: netns_up NAME RATE" >&2; return 2; }
        if ! _netns_up "$1" "$2"; then
                netns_down "$1"
                return 1
        fi
}

# netns_wait_tcp NAME ADDR PORT [SECS] [PID]: poll with a connect from the
# host (bash's /dev/tcp) until one succeeds; NAME is only checked to exist
netns_wait_tcp() {
        local name=$1 addr=$2 port=$3 secs=${4:-30} pid=${5:-} i
        for i in $(seq $((secs * 20))); do
                [ -e "/run/netns/$name" ] || return 1
                if timeout 2 bash -c "exec 3<>/dev/tcp/$addr/$port" 2>/dev/null; then
                        return 0
                fi
                [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null && return 1
                sleep 0.05
        done
        return 1
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
        set -u
        case ${1:-} in
        up)
                [ $# = 3 ] || { echo "usage: netns.sh up NAME RATE" >&2; exit 2; }
                # removed again on failure, also when killed while at it
                trap 'netns_down "$2"; exit 1' INT TERM HUP
                netns_up "$2" "$3" || exit 1
                trap - INT TERM HUP
                echo "NETNS=$NETNS HOST_ADDR=$HOST_ADDR NS_ADDR=$NS_ADDR HOST_IF=$HOST_IF" \
                        "NS_IF=$NS_IF RATE=$RATE"
                ;;
        down)
                [ $# = 2 ] || { echo "usage: netns.sh down NAME" >&2; exit 2; }
                netns_down "$2"
                ;;
        check)
                netns_check
                ;;
        wait-tcp)
                [ $# -ge 4 ] || { echo "usage: netns.sh wait-tcp NAME ADDR PORT [SECS] [PID]" >&2; exit 2; }
                netns_wait_tcp "${@:2}"
                ;;
        *)
                sed -n '3,/^$/s/^# \{0,1\}//p' "$0" >&2
                exit 2
                ;;
        esac
fi
