"""Reads the records of an offline W&B run file (``run-*.wandb``) for tests.

The file is a LevelDB-style log: a 7-byte header (``:W&B``, magic, version),
then 32 KiB blocks of chunks, each with a 7-byte header (crc32, length, type:
1 full, 2 first, 3 middle, 4 last) holding a serialized ``Record`` protobuf.
W&B no longer ships a Python reader, so this is the smallest one that works.
"""

import struct

from wandb.proto import wandb_internal_pb2

BLOCK = 32768
FILE_HEADER = 7
CHUNK_HEADER = 7


def read_records(path: str) -> list:
    with open(path, 'rb') as f:
        raw = f.read()
    assert raw[:4] == b':W&B', raw[:4]
    records, pending, pos = [], b'', FILE_HEADER
    while pos + CHUNK_HEADER <= len(raw):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < CHUNK_HEADER:  # zero padding at the end of a block
            pos += left_in_block
            continue
        _, length, kind = struct.unpack('<IHB', raw[pos : pos + CHUNK_HEADER])
        chunk = raw[pos + CHUNK_HEADER : pos + CHUNK_HEADER + length]
        pos += CHUNK_HEADER + length
        if kind == 0 and length == 0:
            break
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b''
    return records
