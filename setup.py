"""The one thing pyproject.toml cannot say: the C modules of the hot paths (the Avro codec,
schemas/_avro_native.c; the header block splitter, mail/_headers_native.c).

Everything else (metadata, packages, the layer folders' mapping) is in pyproject.toml. Both
are optional at run time (cavro and the Python splitter stand in), but the project's own
set-up (``./run``) always builds them: gcc is on every machine we target.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "inboxstream.schemas._avro_native",
            sources=["schemas/_avro_native.c"],
            extra_compile_args=["-O2", "-Wall", "-Wno-missing-field-initializers"],
        ),
        Extension(
            "inboxstream.mail._headers_native",
            sources=["mail/_headers_native.c"],
            extra_compile_args=["-O2", "-Wall"],
        ),
    ]
)
