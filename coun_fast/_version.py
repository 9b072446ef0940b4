"""The version of coun_fast, written only here: pyproject.toml reads it (statically) for the
package metadata, and ``coun_fast.__version__``, ``coun_fast.info()`` and ``coun-fast --version``
report it."""

__version__ = "0.1.0"
