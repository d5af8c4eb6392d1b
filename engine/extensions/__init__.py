"""Hosting extensions: the registry that discovers, loads and lists them (registry.py), and installing
one from a repository (install.py). The extensions themselves live in the top-level extensions/ folder.

`Extension` and `Field` are re-exported here because `from engine.extensions import Extension, Field`
is the documented API an extension is written against (docs/extensions.md)."""

from engine.extensions.registry import Extension, Field

__all__ = ["Extension", "Field"]
