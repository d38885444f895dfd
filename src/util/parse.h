/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Strict parsers for values that come from guests, peers and config. */
#pragma once

#include <stdint.h>

/*
 * A decimal unsigned number: digits only (no sign, space, prefix or
 * suffix), at least one, value <= max.  0, -EINVAL (not a number) or
 * -ERANGE (above max).
 */
int vbd_parse_uint(const char *s, unsigned long long max, unsigned long long *ret);

/* The same into a uint32_t (max <= UINT32_MAX). */
int vbd_parse_u32(const char *s, uint32_t max, uint32_t *ret);

/* A size in bytes with an optional K/M/G/T suffix, powers of 1024 ("1M" and
 * "1MiB" alike; "1MB" is refused as ambiguous).  0, -EINVAL or -ERANGE. */
int vbd_parse_size(const char *s, uint64_t *ret);
