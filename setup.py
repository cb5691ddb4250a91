"""The optional compiled helper (``turso_sync/_speedups.c``); everything else is in pyproject.toml.

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
        )
    ]
)
