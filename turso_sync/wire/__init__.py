"""Wire formats of Turso's sync protocol, shared by the primary server and the sync client.

Pure code (no sockets, no files): ``pull`` for the protobuf /pull-updates messages, ``hrana``
for the JSON /v2/pipeline messages, ``delimited`` for varint length-delimited framing.
"""
