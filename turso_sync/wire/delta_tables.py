"""The entropy tables of compact page deltas (docs/protocol.md, "Page deltas"), made by
``python -m bench.delta_tables`` from the fleet benchmark's pages; pure data.

A compact frame made with them names ``TABLES_ID`` in its header; its dictionary is these tables
followed by the bases.  They never change: other tables would be another id."""

#: The dictionary id the tables carry, and a frame made with them names (one byte).
TABLES_ID = 1

#: A zstd dictionary without content: its magic, id, Huffman and FSE tables and repeat offsets.
TABLES = bytes.fromhex(
    "37a430ec010000002610d8920c070cc3300c738e5a2020a59464ec8093a44c3225392b17a2b5d65ab3b6b546b4b00323"
    "082800c3a2280004a858c90004c0c100860309070100020083160200800180810180010300018b0100000100011d0000"
    "00000059005806a2118b060064ea9a84430c803200032000002000031808112333652500010000000400000008000000"
)
