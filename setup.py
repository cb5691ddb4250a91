"""The optional compiled helpers (``turso_sync/_speedups.c``, ``turso_sync/_fastvfs.c``); the rest is in pyproject.toml.

``optional=True``: where no C compiler (or no Python headers) is found, the build prints a warning and
the install goes on without the module, and turso_sync uses its pure-Python twins (numpy).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "turso_sync._speedups",
            sources=["turso_sync/_speedups.c"],
            optional=True,
        ),
        # the VFS shim in C (encrypted page reads, lock calls): also needs SQLite's and libgcrypt's
        # headers (Debian: libsqlite3-dev, libgcrypt20-dev); without them only this module is missing
        Extension(
            "turso_sync._fastvfs",
            sources=["turso_sync/_fastvfs.c"],
            libraries=["gcrypt"],
            optional=True,
        ),
    ]
)
