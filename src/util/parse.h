/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Strict parsers for values that come from guests, peers and config. */
#pragma once

/*
 * A decimal unsigned number: digits only (no sign, space, prefix or
 * suffix), at least one, value <= max.  0, -EINVAL (not a number) or
 * -ERANGE (above max).
 */
int vbd_parse_uint(const char *s, unsigned long long max, unsigned long long *ret);
