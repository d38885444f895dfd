#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
# Read and patch qcow2 metadata for the bad-input tests.
#   qcow2-poke.py IMAGE get FIELD            print a header field or a table offset
#   qcow2-poke.py IMAGE set OFFSET SIZE VALUE  write a big-endian integer at OFFSET
# FIELD: version, cluster_bits, l1_offset, rt_offset, l1e0 (first L1 entry),
#        l2e0 (first L2 entry of the first L2 table), rb0 (first refcount block)
import struct, sys

img, cmd = sys.argv[1], sys.argv[2]
with open(img, 'r+b') as f:
    d = f.read(1 << 22)
    if cmd == 'get':
        h = dict(version=struct.unpack('>I', d[4:8])[0],
                 cluster_bits=struct.unpack('>I', d[20:24])[0],
                 l1_offset=struct.unpack('>Q', d[40:48])[0],
                 rt_offset=struct.unpack('>Q', d[48:56])[0])
        f.seek(h['l1_offset']); h['l1e0'] = struct.unpack('>Q', f.read(8))[0]
        l2 = h['l1e0'] & 0x00fffffffffffe00
        f.seek(l2); h['l2e0'] = struct.unpack('>Q', f.read(8))[0]
        f.seek(h['rt_offset']); h['rb0'] = struct.unpack('>Q', f.read(8))[0]
        h['l2_offset'] = l2
        print(h[sys.argv[3]])
    elif cmd == 'set':
        off, size, val = int(sys.argv[3], 0), int(sys.argv[4]), int(sys.argv[5], 0)
        f.seek(off)
        f.write((val % (1 << (8 * size))).to_bytes(size, 'big'))
