/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * An NBD server in the daemon's libev loop, exporting the daemon's image.
 *
 * Written from the NBD protocol specification (NetworkBlockDevice/nbd,
 * doc/proto.md): fixed newstyle handshake only; options EXPORT_NAME, ABORT,
 * LIST, STARTTLS (with TLS credentials), INFO, GO, STRUCTURED_REPLY,
 * LIST_META_CONTEXT and SET_META_CONTEXT (the one context base:allocation);
 * commands READ, WRITE (FUA), DISC, FLUSH, TRIM, WRITE_ZEROES (NO_HOLE) and
 * BLOCK_STATUS; simple replies unless structured replies were negotiated.
 * One export, named cfg->name ("" = the default export).
 *
 * Endpoints: "unix:PATH" (a socket created mode 0600; a stale socket at PATH
 * is replaced, a live one is an error) or "tcp:ADDR:PORT" (ADDR an IPv4
 * address, or an IPv6 address in brackets: tcp:[::1]:10809).
 *
 * TLS (nbd-tls.c, GnuTLS): with cfg->tls_certificates (X.509) or
 * cfg->tls_psk (pre-shared keys) every client must upgrade with
 * NBD_OPT_STARTTLS before any other option (the spec's FORCEDTLS mode);
 * without, STARTTLS is refused.  A TCP export without TLS on an address
 * that is not loopback is refused at start unless cfg->insecure.
 *
 * Everything a client sends is checked (see nbd-internal.h for the limits):
 * a request the spec lets us refuse gets an NBD error reply; a protocol
 * violation (bad magic, unknown client flags, an option or request we
 * cannot even skip) disconnects that client with one log line.  Memory per
 * client is bounded: at most VBD_NBD_MAX_INFLIGHT requests and
 * VBD_NBD_MAX_REQUEST bytes of data buffers in flight; when either is
 * exhausted the client's socket is not read until replies have gone out.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#define VBD_NBD_MAX_REQUEST  (32u << 20) /* bytes per READ/WRITE, and buffers per client */
#define VBD_NBD_MAX_INFLIGHT 64          /* requests per client */
#define VBD_NBD_MAX_CLIENTS  16          /* default */
#define VBD_NBD_NAME_MAX     4096        /* the spec's string limit */

struct ev_loop;
struct vbd_image;
struct vbd_nbd;

struct vbd_nbd_config {
        const char *endpoint; /* "unix:PATH" or "tcp:ADDR:PORT" */
        const char *name;     /* export name; NULL or "" for the default export */
        bool writable;        /* else READ_ONLY is advertised and writes get EPERM */
        unsigned max_clients; /* 0: VBD_NBD_MAX_CLIENTS */
        bool keep_loop_alive; /* the listener keeps ev_run() going (export-only mode) */
        /* TLS, required of every client when one of these is set (FORCEDTLS). */
        const char *tls_certificates; /* X.509: directory with server-cert.pem, ... */
        const char *tls_psk;          /* PSK: psktool keys file */
        bool tls_verify_peer;         /* X.509: clients need a certificate of ca-cert.pem */
        /* TCP without TLS on an address that is not loopback: refused unless set. */
        bool insecure;
};

/*
 * Bind and listen on cfg->endpoint and serve img (which must outlive the
 * export; writes also need a writable image).  NULL + errno, logged.
 */
struct vbd_nbd *vbd_nbd_new(struct ev_loop *loop, struct vbd_image *img,
                            const struct vbd_nbd_config *cfg);

/*
 * Stop: close the listener, stop reading requests, let the requests in
 * flight complete and their replies go out (clients that do not read them
 * within a few seconds are dropped), then close every client and call
 * done(opaque) from the loop.  Calling it again only logs.
 */
void vbd_nbd_shutdown(struct vbd_nbd *n, void (*done)(void *opaque), void *opaque);

/*
 * Pause: stop reading new requests from every client (they wait in the
 * sockets; clients stay connected, handshakes go on) and call done(opaque)
 * once no request of the export is in the image: inline if none is, else
 * from the loop.  Not while paused already (logged, ignored).
 */
void vbd_nbd_pause(struct vbd_nbd *n, void (*done)(void *opaque), void *opaque);

/* Read requests again.  A pause whose done was not called yet is called off. */
void vbd_nbd_resume(struct vbd_nbd *n);

/*
 * Serve img from now on (it must outlive the export; the old one is the
 * caller's).  Only while paused and drained (pause's done called), else
 * -EBUSY.  Clients negotiated the size and block sizes: img must have the
 * same size and logical block, and take requests as large (max_io), else
 * -EINVAL.  The flags advertised stay: a request the new image cannot
 * take (say, a TRIM) fails with an NBD error.  -ENOMEM.
 */
int vbd_nbd_set_image(struct vbd_nbd *n, struct vbd_image *img);

/* Close everything now.  Only with no I/O in flight (after shutdown's done). NULL-safe. */
void vbd_nbd_free(struct vbd_nbd *n);

const char *vbd_nbd_endpoint(const struct vbd_nbd *n);
const char *vbd_nbd_name(const struct vbd_nbd *n);
bool vbd_nbd_writable(const struct vbd_nbd *n);
bool vbd_nbd_tls(const struct vbd_nbd *n); /* TLS required */
unsigned vbd_nbd_clients(const struct vbd_nbd *n);
unsigned vbd_nbd_inflight(const struct vbd_nbd *n); /* requests in the image, all clients */

/* ---- the pure parts, exported for the unit tests ---- */

/* Parse an endpoint.  0, or -EINVAL with nothing written. */
struct vbd_nbd_addr {
        bool unix_socket;
        char path[108];      /* unix */
        char host[64];       /* tcp, without brackets */
        unsigned short port; /* tcp */
};
int vbd_nbd_parse_endpoint(const char *endpoint, struct vbd_nbd_addr *ret);

/* Does host (an address or a name, as the listener resolves it) stand only
 * for loopback addresses (127.0.0.0/8, ::1, ::ffff:127.x)?  The wildcard
 * addresses (0.0.0.0, ::) and what does not resolve are not. */
bool vbd_nbd_host_is_loopback(const char *host);

/* What a transmission request is checked against. */
struct vbd_nbd_limits {
        uint64_t size;      /* export size */
        uint32_t min_block; /* READ/WRITE/WRITE_ZEROES alignment */
        uint32_t max_block; /* READ/WRITE length limit */
        uint16_t eflags;    /* the transmission flags sent to the client */
        bool structured;    /* structured replies negotiated */
        bool meta_alloc;    /* a meta context (base:allocation) selected */
};

/* The NBD error (0 if the request may proceed) for a request header.
 * NBD_CMD_DISC is never refused here. */
uint32_t vbd_nbd_check_request(const struct vbd_nbd_limits *lim, uint16_t flags, uint16_t type,
                               uint64_t offset, uint32_t length);

/* -errno from the image -> the NBD error value sent to the client. */
uint32_t vbd_nbd_errno(int status);
