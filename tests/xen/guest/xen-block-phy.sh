#!/bin/sh
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# Minimal libxl hotplug script for blkback on an existing block device (the
# test's loop device), used instead of /etc/xen/scripts/block, which is far
# too slow under TCG (libxl kills it after its hotplug timeout). libxl calls
# it with "add"/"remove" and XENBUS_PATH=<backend dir>; blkback starts once
# physical-device (hex major:minor) appears.
set -e
case "$1" in
add)
        dev=$(xenstore-read "$XENBUS_PATH/params")
        mm=$(stat -L -c %t:%T "$dev")
        xenstore-write "$XENBUS_PATH/physical-device" "$mm" \
                "$XENBUS_PATH/physical-device-path" "$dev"
        xenstore-write "$XENBUS_PATH/hotplug-status" connected
        ;;
remove) ;;
esac
exit 0
