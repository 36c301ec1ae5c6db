"""The one thing pyproject.toml cannot say: the compiled Avro codec (schemas/_avro_native.c).

Everything else (metadata, packages, the layer folders' mapping) is in pyproject.toml. The
extension is optional at run time (schemas/native_codec.py falls back to cavro), but the
project's own set-up (``./run``) always builds it: gcc is on every machine we target.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "inboxstream.schemas._avro_native",
            sources=["schemas/_avro_native.c"],
            extra_compile_args=["-O2", "-Wall", "-Wno-missing-field-initializers"],
        )
    ]
)
