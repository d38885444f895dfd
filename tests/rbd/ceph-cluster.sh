#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# A throw-away single-node Ceph cluster for the rbd tests and bench/rbd.sh:
# one monitor, one manager, one OSD (BlueStore on a sparse file), pools of
# size 1, everything on one address (127.0.0.1 unless CEPH_ADDR says
# otherwise) with cephx on, all state in one directory.
#
#   ceph-cluster.sh start DIR     bring it up in DIR (created, must be empty);
#                                 prints DIR/ceph.conf; on failure tears down
#                                 what it started and exits non-zero
#   ceph-cluster.sh stop DIR      stop every daemon of DIR and remove DIR
#   ceph-cluster.sh osd-kill DIR  kill -9 the OSD (its data stays)
#   ceph-cluster.sh osd-start DIR start the OSD again, wait until it is up
#
# After start, DIR holds:
#   ceph.conf                  for -c / conf= (client.admin's keyring in it)
#   client.admin.keyring       every capability
#   client.vbd.keyring         client.vbd: "profile rbd" on pool rbd only
#   *.log, *.pid               the daemons' logs and pids
# and the pool "rbd" exists (rbd pool init).
#
# Environment: CEPH_OSD_SIZE (default 4G: the sparse file), CEPH_START_TIMEOUT
# (seconds, default 60), CEPH_ADDR (default 127.0.0.1: the IPv4 address of
# this host the monitor, the manager and the OSD bind to and announce; the
# real-guest Xen suite gives one on a tap device, which its dom0 reaches).  Memory is kept small: the OSD's caches are fixed at
# 64 MiB (osd_memory_target cannot go below 896 MiB in Ceph 16, so autotuning
# is off instead), the manager loads no optional modules.
#
# Run it as root or as any user: the daemons run as the caller, on ports the
# kernel picks for the OSD and the manager and a free one for the monitor.
set -u

die() {
        echo "ceph-cluster: $*" >&2
        exit 1
}

pidfile_kill() { # SIG FILE: signal the pid in FILE; 0 when it was alive
        local pid
        [ -f "$2" ] || return 1
        pid=$(cat "$2" 2>/dev/null)
        [ -n "$pid" ] || return 1
        kill -"$1" "$pid" 2>/dev/null
}

wait_gone() { # FILE SECONDS: until the pid in FILE is gone
        local pid i
        pid=$(cat "$1" 2>/dev/null) || return 0
        [ -n "$pid" ] || return 0
        for ((i = 0; i < $2 * 20; i++)); do
                kill -0 "$pid" 2>/dev/null || return 0
                sleep 0.05
        done
        return 1
}

# Stop every daemon of DIR: TERM, then KILL after 10 s.
stop_daemons() {
        local d=$1 f
        for f in "$d"/osd.pid "$d"/mgr.pid "$d"/mon.pid; do
                pidfile_kill CONT "$f"
                pidfile_kill TERM "$f"
        done
        for f in "$d"/osd.pid "$d"/mgr.pid "$d"/mon.pid; do
                wait_gone "$f" 10 || { pidfile_kill KILL "$f"; wait_gone "$f" 5; }
                rm -f "$f"
        done
}

cmd_stop() {
        local d=$1
        [ -d "$d" ] || return 0
        [ -f "$d/ceph.conf" ] || [ -f "$d/.ceph-cluster" ] ||
                die "$d does not look like a ceph-cluster.sh directory"
        stop_daemons "$d"
        rm -rf "$d"
}

free_port() {
        python3 -c 'import socket, sys
s = socket.socket()
s.bind((sys.argv[1], 0))
print(s.getsockname()[1])' "$addr"
}

# ceph with a timeout: a command to a dead monitor would wait for ever.
c() {
        timeout 30 ceph -c "$dir/ceph.conf" --connect-timeout 20 "$@"
}

start_osd() {
        # -f: in the foreground of a background job, so that the pid is the daemon's
        nice -n 19 ionice -c3 ceph-osd -f -c "$dir/ceph.conf" -i 0 >>"$dir/osd.out" 2>&1 &
        echo $! >"$dir/osd.pid"
}

wait_osd_up() {
        local i
        for ((i = 0; i < timeout_s * 5; i++)); do
                grep -q "state: booting -> active" "$dir/osd.0.log" 2>/dev/null &&
                        c osd stat 2>/dev/null | grep -q "1 up" && return 0
                pidfile_kill 0 "$dir/osd.pid" || { tail -5 "$dir/osd.log" >&2; return 1; }
                sleep 0.2
        done
        return 1
}

cmd_start() {
        local fsid port t0
        dir=$1
        addr=${CEPH_ADDR:-127.0.0.1}
        [[ $addr =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "CEPH_ADDR '$addr' is not an IPv4 address"
        t0=$(date +%s%N)
        timeout_s=${CEPH_START_TIMEOUT:-60}
        for t in ceph ceph-mon ceph-mgr ceph-osd ceph-authtool monmaptool rbd python3; do
                command -v $t >/dev/null || die "$t not found (apt-get install ceph-mon ceph-osd ceph-mgr ceph-common)"
        done
        mkdir -p "$dir" || die "cannot create $dir"
        [ -z "$(ls -A "$dir")" ] || die "$dir is not empty"
        dir=$(cd "$dir" && pwd)
        : >"$dir/.ceph-cluster"
        trap 'stop_daemons "$dir"; echo "ceph-cluster: start failed; logs were in $dir" >&2' EXIT

        fsid=$(python3 -c 'import uuid; print(uuid.uuid4())')
        port=$(free_port) || die "cannot bind to $addr (CEPH_ADDR)"
        cat >"$dir/ceph.conf" <<EOF
[global]
fsid = $fsid
mon_host = [v2:$addr:$port]
public_addr = $addr
cluster_addr = $addr
ms_bind_msgr1 = false
ms_bind_ipv6 = false
auth_cluster_required = cephx
auth_service_required = cephx
auth_client_required = cephx
keyring = $dir/client.admin.keyring
log_file = $dir/\$name.log
pid_file = $dir/\$type.pid.daemon
admin_socket = $dir/\$name.asok
run_dir = $dir
crash_dir = $dir/crash
log_to_stderr = false
err_to_stderr = true
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
osd_crush_chooseleaf_type = 0
mon_allow_pool_size_one = true
mon_allow_pool_delete = true
mon_warn_on_pool_no_redundancy = false
mon_data_avail_warn = 2
mon_data_avail_crit = 1
debug_ms = 0
paxos_propose_interval = 0.05
paxos_min_wait = 0.01
mon_osd_report_timeout = 30

[mon]
mon_data = $dir/mon
mon_initial_members = a

[mgr]
mgr_data = $dir/mgr
mgr_initial_modules =

[osd]
osd_data = $dir/osd
osd_objectstore = bluestore
bluestore_block_path = $dir/osd.block
bluestore_block_size = ${CEPH_OSD_SIZE:-4G}
bluestore_block_create = true
bluestore_fsck_on_mkfs = false
bluestore_fsck_on_mount = false
bluestore_cache_autotune = false
bluestore_cache_size = 64M
osd_memory_target = 896M
osd_op_num_shards = 2
osd_op_num_threads_per_shard = 1
osd_max_object_name_len = 256
osd_max_object_namespace_len = 64
osd_heartbeat_grace = 5
EOF
        local admin=$dir/client.admin.keyring
        ceph-authtool "$dir/mon.keyring" --create-keyring --gen-key -n mon. --cap mon 'allow *' >/dev/null ||
                die "ceph-authtool failed"
        ceph-authtool "$admin" --create-keyring --gen-key -n client.admin \
                --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' --cap mds 'allow *' >/dev/null ||
                die "ceph-authtool failed"
        ceph-authtool "$dir/mon.keyring" --import-keyring "$admin" >/dev/null || die "ceph-authtool failed"
        monmaptool --create --fsid "$fsid" --addv a "[v2:$addr:$port]" "$dir/monmap" >/dev/null ||
                die "monmaptool failed"
        mkdir -p "$dir/mon" "$dir/mgr" "$dir/osd" "$dir/crash"
        ceph-mon -c "$dir/ceph.conf" --mkfs -i a --monmap "$dir/monmap" \
                --keyring "$dir/mon.keyring" >"$dir/mon.out" 2>&1 ||
                { cat "$dir/mon.out" >&2; die "ceph-mon --mkfs failed"; }
        nice -n 19 ceph-mon -f -c "$dir/ceph.conf" -i a >>"$dir/mon.out" 2>&1 &
        echo $! >"$dir/mon.pid"

        # the monitor answers (quorum of one)
        local i
        for ((i = 0; i < timeout_s * 10; i++)); do
                c mon stat >/dev/null 2>&1 && break
                pidfile_kill 0 "$dir/mon.pid" || { cat "$dir/mon.out" >&2; die "ceph-mon exited"; }
                sleep 0.1
        done
        c mon stat >/dev/null 2>&1 || die "the monitor does not answer"

        # the manager (its keyring in its data directory)
        c auth get-or-create mgr.x mon 'allow profile mgr' osd 'allow *' mds 'allow *' \
                -o "$dir/mgr/keyring" >/dev/null 2>&1 || die "cannot make mgr.x's key"
        nice -n 19 ceph-mgr -f -c "$dir/ceph.conf" -i x --keyring "$dir/mgr/keyring" \
                >>"$dir/mgr.out" 2>&1 &
        echo $! >"$dir/mgr.pid"

        # the OSD: registered, its key, mkfs on the sparse file, started
        local uuid osd_id
        uuid=$(python3 -c 'import uuid; print(uuid.uuid4())')
        osd_id=$(c osd new "$uuid" 2>/dev/null) || die "ceph osd new failed"
        [ "$osd_id" = 0 ] || die "ceph osd new gave id '$osd_id'"
        c auth get-or-create osd.0 mon 'allow profile osd' mgr 'allow profile osd' osd 'allow *' \
                -o "$dir/osd/keyring" >/dev/null 2>&1 || die "cannot make osd.0's key"
        echo "[osd.0]" >>"$dir/ceph.conf"
        echo "keyring = $dir/osd/keyring" >>"$dir/ceph.conf"
        echo "[mgr.x]" >>"$dir/ceph.conf"
        echo "keyring = $dir/mgr/keyring" >>"$dir/ceph.conf"
        nice -n 19 ionice -c3 ceph-osd -c "$dir/ceph.conf" -i 0 --mkfs --osd-uuid "$uuid" \
                >"$dir/osd.out" 2>&1 || { tail -20 "$dir/osd.out" >&2; die "ceph-osd --mkfs failed"; }
        start_osd
        wait_osd_up || die "the OSD did not come up within ${timeout_s} s"

        # the pool (rbd pool init writes to it: its pgs are active after), and a user that can only use RBD images in it
        c osd pool create rbd 8 8 >/dev/null 2>&1 || die "cannot create pool rbd"
        timeout 60 rbd -c "$dir/ceph.conf" pool init rbd || die "rbd pool init failed"
        c auth get-or-create client.vbd mon 'profile rbd' osd 'profile rbd pool=rbd' \
                mgr 'profile rbd pool=rbd' -o "$dir/client.vbd.keyring" >/dev/null 2>&1 ||
                die "cannot make client.vbd's key"
        trap - EXIT
        echo "ceph-cluster: up in $((($(date +%s%N) - t0) / 1000000)) ms in $dir" >&2
        echo "$dir/ceph.conf"
}

# The OSD's up_from epoch (0 when it is not up).
osd_up_from() {
        c osd dump --format json 2>/dev/null | python3 -c '
import json, sys
o = json.load(sys.stdin)["osds"][0]
print(o["up_from"] if o["up"] else 0)' 2>/dev/null
}

cmd_osd_kill() {
        dir=$1
        pidfile_kill KILL "$dir/osd.pid" || die "no OSD running in $dir"
        wait_gone "$dir/osd.pid" 10
        rm -f "$dir/osd.pid"
        # the monitor still lists the killed OSD as up, with its up_from
        osd_up_from >"$dir/osd.up_from"
}

# Start it again and wait until it booted: the monitor still lists the
# killed one as up until the new one boots, with a later up_from.
cmd_osd_start() {
        local before i u
        dir=$1
        timeout_s=${CEPH_START_TIMEOUT:-60}
        pidfile_kill 0 "$dir/osd.pid" && die "the OSD of $dir runs already"
        before=$(cat "$dir/osd.up_from" 2>/dev/null || echo 0)
        start_osd
        for ((i = 0; i < timeout_s * 10; i++)); do
                u=$(osd_up_from)
                [ -n "$u" ] && [ "$u" -gt "${before:-0}" ] && return 0
                pidfile_kill 0 "$dir/osd.pid" || die "the OSD exited"
                sleep 0.1
        done
        die "the OSD did not come back within ${timeout_s} s"
}

case "${1:-}" in
start) [ $# = 2 ] || die "usage: $0 start DIR"; cmd_start "$2" ;;
stop) [ $# = 2 ] || die "usage: $0 stop DIR"; cmd_stop "$2" ;;
osd-kill) [ $# = 2 ] || die "usage: $0 osd-kill DIR"; cmd_osd_kill "$2" ;;
osd-start) [ $# = 2 ] || die "usage: $0 osd-start DIR"; cmd_osd_start "$2" ;;
*) die "usage: $0 start|stop|osd-kill|osd-start DIR" ;;
esac
