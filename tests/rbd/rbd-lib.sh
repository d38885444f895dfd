# SPDX-License-Identifier: LGPL-2.1-or-later
# Helpers for the rbd tests, on top of tests/lib/functions.sh:
#
#   requires_ceph          install the Ceph packages when they are missing
#                          (root or passwordless sudo); skip (77) only when
#                          they cannot be installed
#   start_ceph             ceph-cluster.sh start in $tmp/ceph, torn down at
#                          exit; sets $conf, $cdir, $admin (rbd/ceph args)
#   rspec IMAGE [OPTS]     the driver spec of pool rbd's IMAGE as client.vbd
#   rbdc ARGS...           the rbd tool as client.admin, with a timeout
_rbd_dir=$(cd "$(dirname "${BASH_SOURCE:-$0}")" && pwd)
CEPH_PKGS="ceph-mon ceph-osd ceph-mgr ceph-common qemu-block-extra"

requires_ceph() {
        local t missing=""
        for t in ceph-mon ceph-osd ceph-mgr ceph rbd ceph-authtool monmaptool; do
                command -v $t >/dev/null 2>&1 || missing=1
        done
        qemu-img --help 2>/dev/null | grep -qw rbd || missing=1
        [ -z "$missing" ] && return 0
        local sudo=""
        [ "$(id -u)" = 0 ] || sudo="sudo -n"
        echo "$0: installing $CEPH_PKGS" >&2
        if ! { $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
                --no-install-recommends $CEPH_PKGS >"$tmp/apt.log" 2>&1; }; then
                echo "$0: skipped: the Ceph packages ($CEPH_PKGS) are not installed and" \
                        "cannot be installed here:" >&2
                tail -3 "$tmp/apt.log" >&2
                exit 77
        fi
}

start_ceph() {
        local t0
        cdir=$tmp/ceph
        cleanup_fn "$_rbd_dir/ceph-cluster.sh" stop "$cdir"
        t0=$(date +%s%N)
        conf=$("$_rbd_dir/ceph-cluster.sh" start "$cdir") || { fail "the cluster did not start"; finish; }
        echo "cluster up in $((($(date +%s%N) - t0) / 1000000)) ms" >&2
}

rspec() {
        echo "rbd:rbd/$1,conf=$conf,id=vbd,keyring=$cdir/client.vbd.keyring${2:+,$2}"
}

rbdc() {
        timeout 120 rbd -c "$conf" "$@"
}
