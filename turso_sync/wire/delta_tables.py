"""The entropy tables of compact page deltas (docs/protocol.md, "Page deltas"), made by
``python -m bench.delta_tables`` from the pages of a generic application table (not a
benchmark's rows); pure data.

A compact frame made with them names ``TABLES_ID`` in its header; its dictionary is these tables
followed by the bases.  They never change: other tables would be another id."""

#: The dictionary id the tables carry, and a frame made with them names (one byte).
TABLES_ID = 1

#: A zstd dictionary without content: its magic, id, Huffman and FSE tables and repeat offsets.
TABLES = bytes.fromhex(
    "37a430ec010000004210a0b5491bc330bc2e33e1320cc3300cc3dd250e0c0c160bdf51f111831ebabb7bfd8fa74095f5"
    "0368f665776fda690243da711a59a52c57145beb36fbfdf6ff3f92a30420000002c141c1585c5e34070480c2c20e239a"
    "0a8c890c4982913021000501000000001000000000800000000062800220280a0084eacd63753b800721900100066010"
    "0420002f1200000000010000000400000008000000"
)
