from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PageUpdatesEncodingReq(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENC_RAW: _ClassVar[PageUpdatesEncodingReq]
    ENC_ZSTD: _ClassVar[PageUpdatesEncodingReq]

class PullUpdatesStreamKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STREAM_PAGES: _ClassVar[PullUpdatesStreamKind]
    STREAM_MVCC_LOGICAL_LOG: _ClassVar[PullUpdatesStreamKind]

class PullUpdatesApplyMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    APPLY_INCREMENTAL: _ClassVar[PullUpdatesApplyMode]
    APPLY_REPLACE_BASE: _ClassVar[PullUpdatesApplyMode]

class PullUpdatesProtocol(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROTO_UNSPECIFIED: _ClassVar[PullUpdatesProtocol]
    PROTO_PAGES: _ClassVar[PullUpdatesProtocol]
    PROTO_MVCC_LOGICAL: _ClassVar[PullUpdatesProtocol]
ENC_RAW: PageUpdatesEncodingReq
ENC_ZSTD: PageUpdatesEncodingReq
STREAM_PAGES: PullUpdatesStreamKind
STREAM_MVCC_LOGICAL_LOG: PullUpdatesStreamKind
APPLY_INCREMENTAL: PullUpdatesApplyMode
APPLY_REPLACE_BASE: PullUpdatesApplyMode
PROTO_UNSPECIFIED: PullUpdatesProtocol
PROTO_PAGES: PullUpdatesProtocol
PROTO_MVCC_LOGICAL: PullUpdatesProtocol

class PullUpdatesReqProtoBody(_message.Message):
    __slots__ = ("encoding", "server_revision", "client_revision", "long_poll_timeout_ms", "server_pages_selector", "client_pages", "server_query_selector", "stream_kind", "page_deltas", "page_deltas_version", "zstd_frame_pages")
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    SERVER_REVISION_FIELD_NUMBER: _ClassVar[int]
    CLIENT_REVISION_FIELD_NUMBER: _ClassVar[int]
    LONG_POLL_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    SERVER_PAGES_SELECTOR_FIELD_NUMBER: _ClassVar[int]
    CLIENT_PAGES_FIELD_NUMBER: _ClassVar[int]
    SERVER_QUERY_SELECTOR_FIELD_NUMBER: _ClassVar[int]
    STREAM_KIND_FIELD_NUMBER: _ClassVar[int]
    PAGE_DELTAS_FIELD_NUMBER: _ClassVar[int]
    PAGE_DELTAS_VERSION_FIELD_NUMBER: _ClassVar[int]
    ZSTD_FRAME_PAGES_FIELD_NUMBER: _ClassVar[int]
    encoding: PageUpdatesEncodingReq
    server_revision: str
    client_revision: str
    long_poll_timeout_ms: int
    server_pages_selector: bytes
    client_pages: bytes
    server_query_selector: str
    stream_kind: PullUpdatesStreamKind
    page_deltas: bool
    page_deltas_version: int
    zstd_frame_pages: int
    def __init__(self, encoding: _Optional[_Union[PageUpdatesEncodingReq, str]] = ..., server_revision: _Optional[str] = ..., client_revision: _Optional[str] = ..., long_poll_timeout_ms: _Optional[int] = ..., server_pages_selector: _Optional[bytes] = ..., client_pages: _Optional[bytes] = ..., server_query_selector: _Optional[str] = ..., stream_kind: _Optional[_Union[PullUpdatesStreamKind, str]] = ..., page_deltas: _Optional[bool] = ..., page_deltas_version: _Optional[int] = ..., zstd_frame_pages: _Optional[int] = ...) -> None: ...

class PageData(_message.Message):
    __slots__ = ("page_id", "encoded_page")
    PAGE_ID_FIELD_NUMBER: _ClassVar[int]
    ENCODED_PAGE_FIELD_NUMBER: _ClassVar[int]
    page_id: int
    encoded_page: bytes
    def __init__(self, page_id: _Optional[int] = ..., encoded_page: _Optional[bytes] = ...) -> None: ...

class PageSetRawEncodingProto(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PageSetZstdEncodingProto(_message.Message):
    __slots__ = ("level", "pages_dict")
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    PAGES_DICT_FIELD_NUMBER: _ClassVar[int]
    level: int
    pages_dict: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, level: _Optional[int] = ..., pages_dict: _Optional[_Iterable[int]] = ...) -> None: ...

class PageDeltasProto(_message.Message):
    __slots__ = ("page_ids", "base_digest", "frame", "new_page_ids", "compact_frame", "content_digest")
    PAGE_IDS_FIELD_NUMBER: _ClassVar[int]
    BASE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    NEW_PAGE_IDS_FIELD_NUMBER: _ClassVar[int]
    COMPACT_FRAME_FIELD_NUMBER: _ClassVar[int]
    CONTENT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    page_ids: _containers.RepeatedScalarFieldContainer[int]
    base_digest: int
    frame: bytes
    new_page_ids: _containers.RepeatedScalarFieldContainer[int]
    compact_frame: bytes
    content_digest: int
    def __init__(self, page_ids: _Optional[_Iterable[int]] = ..., base_digest: _Optional[int] = ..., frame: _Optional[bytes] = ..., new_page_ids: _Optional[_Iterable[int]] = ..., compact_frame: _Optional[bytes] = ..., content_digest: _Optional[int] = ...) -> None: ...

class MvccLogicalLogRangeProto(_message.Message):
    __slots__ = ("generation", "start_offset", "end_offset", "starts_with_header", "crc_seed")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    START_OFFSET_FIELD_NUMBER: _ClassVar[int]
    END_OFFSET_FIELD_NUMBER: _ClassVar[int]
    STARTS_WITH_HEADER_FIELD_NUMBER: _ClassVar[int]
    CRC_SEED_FIELD_NUMBER: _ClassVar[int]
    generation: int
    start_offset: int
    end_offset: int
    starts_with_header: bool
    crc_seed: bytes
    def __init__(self, generation: _Optional[int] = ..., start_offset: _Optional[int] = ..., end_offset: _Optional[int] = ..., starts_with_header: _Optional[bool] = ..., crc_seed: _Optional[bytes] = ...) -> None: ...

class MvccLogicalLogMetadataProto(_message.Message):
    __slots__ = ("format", "checkpoint_transition", "ranges")
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_TRANSITION_FIELD_NUMBER: _ClassVar[int]
    RANGES_FIELD_NUMBER: _ClassVar[int]
    format: str
    checkpoint_transition: bool
    ranges: _containers.RepeatedCompositeFieldContainer[MvccLogicalLogRangeProto]
    def __init__(self, format: _Optional[str] = ..., checkpoint_transition: _Optional[bool] = ..., ranges: _Optional[_Iterable[_Union[MvccLogicalLogRangeProto, _Mapping]]] = ...) -> None: ...

class PullUpdatesRespProtoBody(_message.Message):
    __slots__ = ("server_revision", "db_size", "raw_encoding", "zstd_encoding", "stream_kind", "apply_mode", "mvcc_log", "protocol", "page_deltas")
    SERVER_REVISION_FIELD_NUMBER: _ClassVar[int]
    DB_SIZE_FIELD_NUMBER: _ClassVar[int]
    RAW_ENCODING_FIELD_NUMBER: _ClassVar[int]
    ZSTD_ENCODING_FIELD_NUMBER: _ClassVar[int]
    STREAM_KIND_FIELD_NUMBER: _ClassVar[int]
    APPLY_MODE_FIELD_NUMBER: _ClassVar[int]
    MVCC_LOG_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    PAGE_DELTAS_FIELD_NUMBER: _ClassVar[int]
    server_revision: str
    db_size: int
    raw_encoding: PageSetRawEncodingProto
    zstd_encoding: PageSetZstdEncodingProto
    stream_kind: PullUpdatesStreamKind
    apply_mode: PullUpdatesApplyMode
    mvcc_log: MvccLogicalLogMetadataProto
    protocol: PullUpdatesProtocol
    page_deltas: PageDeltasProto
    def __init__(self, server_revision: _Optional[str] = ..., db_size: _Optional[int] = ..., raw_encoding: _Optional[_Union[PageSetRawEncodingProto, _Mapping]] = ..., zstd_encoding: _Optional[_Union[PageSetZstdEncodingProto, _Mapping]] = ..., stream_kind: _Optional[_Union[PullUpdatesStreamKind, str]] = ..., apply_mode: _Optional[_Union[PullUpdatesApplyMode, str]] = ..., mvcc_log: _Optional[_Union[MvccLogicalLogMetadataProto, _Mapping]] = ..., protocol: _Optional[_Union[PullUpdatesProtocol, str]] = ..., page_deltas: _Optional[_Union[PageDeltasProto, _Mapping]] = ...) -> None: ...
