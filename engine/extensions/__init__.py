"""Hosting extensions: the registry that discovers, loads and lists them (registry.py), and installing
one from a repository (install.py). The extensions themselves live in the top-level extensions/ folder.

`Extension`, `Script` and `Field` are re-exported here because `from engine.extensions import ...`
is the documented API an extension is written against (docs/extensions.md)."""

from engine.extensions.fields import Field
from engine.extensions.registry import Extension
from engine.extensions.script import Script, ScriptHost

__all__ = ["Extension", "Field", "Script", "ScriptHost"]
