/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Unix socket helpers shared by the control socket and the NBD export. */
#pragma once

/*
 * Does a live server answer on the unix socket at path?  1 yes, 0 no (no
 * such file, or a stale socket nobody listens on), -EEXIST when path is
 * not a socket, or -errno.  path must fit in sun_path.
 */
int vbd_unix_socket_alive(const char *path);
