"""Command-line flags, COMMANDLINE_ARGS and the start-up messages."""

import pytest

import app
from engine.settings import flags


def test_defaults():
    parsed = flags.parse([], environ={})
    assert parsed.port == 7860 and not parsed.listen and not parsed.api and not parsed.demo


def test_commandline_args_environment_is_honoured_and_the_command_line_wins():
    parsed = flags.parse(["--port", "9000"], environ={"COMMANDLINE_ARGS": "--listen --api --port 8000"})
    assert parsed.listen and parsed.api and parsed.port == 9000


def test_credentials_lists_allow_colons_in_passwords():
    parsed = flags.parse(["--gradio-auth", "ann:se:cret, bob:pw"], environ={})
    assert parsed.gradio_auth == [("ann", "se:cret"), ("bob", "pw")]


@pytest.mark.parametrize("value", ["nopassword", ":pw", "user:", ","])
def test_bad_credentials_are_refused(value, capsys):
    with pytest.raises(SystemExit):
        flags.parse(["--api-auth", value], environ={})
    assert "api-auth" in capsys.readouterr().err


def test_use_cpu_all():
    assert flags.uses_cpu(flags.parse(["--use-cpu", "all"], environ={}))
    assert not flags.uses_cpu(flags.parse([], environ={}))


def test_cmd_flags_hide_credentials():
    parsed = flags.parse(["--api-auth", "a:b"], environ={})
    assert flags.public_dict(parsed)["api_auth"] == "<hidden>"


def test_listen_prints_lan_addresses_and_warns_without_auth(capsys, monkeypatch):
    monkeypatch.setattr(app, "lan_addresses", lambda: ["192.168.1.20"])
    parsed = flags.parse(["--listen", "--port", "7870"], environ={})
    app.announce(parsed, "http")
    out = capsys.readouterr().out
    assert "http://127.0.0.1:7870/" in out
    assert "http://192.168.1.20:7870/" in out
    assert "without --gradio-auth" in out


def test_lan_addresses_are_not_loopback():
    assert all(not address.startswith("127.") for address in app.lan_addresses())
