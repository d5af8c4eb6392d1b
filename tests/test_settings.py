"""config.json: atomic, unknown keys kept, a broken file moved aside instead of a crash."""

import json

import pytest

from engine.errors import RequestError
from engine.settings.store import Settings


def test_defaults_then_update_persists(tmp_path):
    path = tmp_path / "config.json"
    settings = Settings(path)
    assert settings["samples_save"] is True
    changed = settings.update({"samples_save": False, "show_progress_every_n_steps": 3,
                               "grid_save": True})
    assert set(changed) == {"samples_save", "show_progress_every_n_steps"}  # grid_save was already on
    again = Settings(path)
    assert again["samples_save"] is False and again["show_progress_every_n_steps"] == 3


def test_unknown_keys_are_kept(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"some_extension_option": [1, 2], "samples_save": False}))
    settings = Settings(path)
    settings.update({"grid_save": False})
    data = json.loads(path.read_text())
    assert data["some_extension_option"] == [1, 2]
    assert data["grid_save"] is False and data["samples_save"] is False
    assert settings.as_dict()["some_extension_option"] == [1, 2]


def test_broken_config_is_moved_aside_and_defaults_used(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"samples_save": fal')
    settings = Settings(path)
    assert settings["samples_save"] is True
    assert "could not be read" in settings.load_warning
    moved = list(tmp_path.glob("config.json.broken-*"))
    assert len(moved) == 1 and moved[0].read_text() == '{"samples_save": fal'


def test_bad_values_are_refused_with_the_key_named(tmp_path):
    settings = Settings(tmp_path / "config.json")
    with pytest.raises(RequestError) as caught:
        settings.update({"show_progress_every_n_steps": "often"})
    assert caught.value.field == "show_progress_every_n_steps"
    with pytest.raises(RequestError, match="between 1 and 100"):
        settings.update({"show_progress_every_n_steps": 0})
    assert not (tmp_path / "config.json").exists()  # nothing half-applied


def test_wrongly_typed_value_in_file_falls_back_to_default(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"samples_save": "maybe"}))
    assert Settings(path)["samples_save"] is True
