"""The one thing pyproject.toml cannot say: the compiled modules of the hot paths.

* C: the Avro codec (schemas/_avro_native.c) and the header block splitter
  (mail/_headers_native.c).
* mypyc: the backfill's parse modules and the stream processor's record path, compiled from
  their typed Python as they are, one shared library per group (the lists and why:
  inboxstream/_compiled.py). Their source hashes go into a manifest beside them, so a
  source edited after the build runs as source, never as the old build.

Everything else (metadata, packages, the layer folders' mapping) is in pyproject.toml. All are
optional at run time (cavro, the Python splitter and the sources stand in), but the project's
own set-up (``./run``) always builds them: gcc is on every machine we target.
``INBOXSTREAM_NO_MYPYC=1`` skips the mypyc modules.
"""

import json
import os
import runpy
from pathlib import Path

from setuptools import Extension, setup

HERE = Path(__file__).resolve().parent
compiled = runpy.run_path(str(HERE / "inboxstream" / "_compiled.py"))

ext_modules = [
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

# A module taken off the list (or a build skipped) leaves its old extension beside its .py,
# and Python would import that first: every extension with a .py of the same name that is not
# on the list goes. (The C modules have no .py beside them.)
MYPYC = os.environ.get("INBOXSTREAM_NO_MYPYC") != "1"
_keep = set(compiled["MODULES"]) if MYPYC else set()
for _so in (HERE / "inboxstream").glob("*/*.cpython-*.so"):
    _module = "inboxstream." + _so.parent.name + "." + _so.name.split(".")[0]
    if _so.with_name(_so.name.split(".")[0] + ".py").exists() and _module not in _keep:
        _so.unlink()

if MYPYC:
    from mypyc.build import mypycify

    # Our own mypy settings, not pyproject's: the build runs before the dependencies are
    # installed (no pydantic plugin to load; their types are Any here, checked by `mypy` in CI).
    options = ["--config-file=", "--ignore-missing-imports", "--python-version=3.11"]
    for group, modules in compiled["GROUPS"].items():
        paths = [str(compiled["source_path"](m).relative_to(HERE)) for m in modules]
        ext_modules += mypycify(options + paths, opt_level="3", group_name=group)
    Path(compiled["MANIFEST"]).write_text(json.dumps(compiled["source_hashes"](), indent=1))

setup(ext_modules=ext_modules)
