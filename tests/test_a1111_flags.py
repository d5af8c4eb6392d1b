"""AUTOMATIC1111 users' start flags: every one of v1.10.1 is accepted, those with a meaning here
act, the others say what this app does instead, and a misspelt one still gets an error naming the
closest flag."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pytest
import torch

import app
from engine.settings import a1111_flags, flags
from engine.devices import precisions
from engine.errors import ForbiddenError
from engine.settings.folders import Folders
from engine.settings.store import Settings
from tests.support.a1111_flag_list import A1111_FLAGS

SAMPLE = {"switch": [], "value": ["x"], "int": ["3"], "values": ["all"], "append": ["x"], "json": ['{"a": 1}']}
# Flags whose value is checked here (a choice, a path that must exist, a login).
SAMPLE_FOR = {"--precision": ["full"], "--theme": ["dark"], "--loglevel": ["WARNING"],
              "--controlnet-loglevel": ["INFO"], "--gradio-auth": ["ann:pw"], "--api-auth": ["ann:pw"],
              "--device-id": ["0"], "--port": ["7870"], "--subpath": ["sd"], "--timeout-keep-alive": ["5"],
              "--filenames-max-length": ["100"], "--cors-allow-origins-regex": [r"https://.*\.studio\.lan"]}


def test_the_list_is_a1111_v1_10_1s_whole_parser():
    assert len(A1111_FLAGS) == 132  # 121 core + 5 built-in extensions + 6 ControlNet extension
    assert len({flag for flag, _, _ in A1111_FLAGS}) == 132


@pytest.mark.parametrize("flag, kind, source", A1111_FLAGS, ids=[f[0] for f in A1111_FLAGS])
def test_every_a1111_flag_is_accepted(flag, kind, source, tmp_path):
    value = SAMPLE_FOR.get(flag, SAMPLE[kind])
    if flag == "--gradio-auth-path":
        logins = tmp_path / "logins.txt"
        logins.write_text("ann:pw\n")
        value = [str(logins)]
    if flag in ("--tls-keyfile", "--tls-certfile"):  # they go together
        args = ["--tls-keyfile", "k.pem", "--tls-certfile", "c.pem"]
    else:
        args = [flag, *value]
    parsed = flags.parse(args, environ={})
    assert isinstance(parsed, argparse.Namespace)
    assert flag.lstrip("-").replace("-", "_") in flags.public_dict(parsed)


def test_all_of_them_at_once_from_commandline_args(tmp_path):
    line = []
    for flag, kind, _ in A1111_FLAGS:
        if flag in ("--gradio-auth-path", "--tls-keyfile", "--tls-certfile", "--data-dir", "--ckpt"):
            continue
        line += [flag, *(f"'{v}'" for v in SAMPLE_FOR.get(flag, SAMPLE[kind]))]
    parsed = flags.parse([], environ={"COMMANDLINE_ARGS": " ".join(line)})
    assert parsed.xformers and parsed.no_half_vae and parsed.precision == "full"


def test_the_usual_webui_user_line_starts(capsys):
    parsed = flags.parse([], environ={"COMMANDLINE_ARGS": "--xformers --no-half-vae"})
    assert parsed.no_half_vae and parsed.xformers
    notes = dict(a1111_flags.given(parsed))
    assert "scaled-dot-product attention" in notes["--xformers"]
    assert "--no-half-vae" not in notes  # it acts here, so no "instead" line


@pytest.mark.parametrize("typo, suggestion", [("--lisen", "--listen"), ("--xfromers", "--xformers"),
                                              ("--no-half-vea", "--no-half-vae"), ("--medvarm", "--medvram")])
def test_a_misspelt_flag_names_the_closest_one(typo, suggestion, capsys):
    with pytest.raises(SystemExit) as exit_:
        flags.parse([typo], environ={})
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"unrecognized arguments: {typo} (did you mean {suggestion}?)" in err


def test_nonsense_is_still_refused(capsys):
    with pytest.raises(SystemExit):
        flags.parse(["--definitely-not-a-flag-of-anything"], environ={})
    assert "unrecognized arguments: --definitely-not-a-flag-of-anything" in capsys.readouterr().err


@pytest.mark.parametrize("args, words", [
    (["--precision", "double"], "invalid choice"),
    (["--device-id", "gpu"], "--device-id must be a GPU index"),
    (["--subpath", "../x"], "--subpath may hold only"),
    (["--timeout-keep-alive", "0"], "at least 1 second"),
    (["--cors-allow-origins-regex", "("], "not a regular expression"),
    (["--cors-allow-origins-regex", "https?://.*"], "matches any web site"),
])
def test_bad_values_are_refused_with_the_reason(args, words, capsys):
    with pytest.raises(SystemExit):
        flags.parse(args, environ={})
    assert words in capsys.readouterr().err


def test_start_up_says_what_each_accepted_flag_does_instead(caplog, tmp_path):
    parsed = flags.parse(["--xformers", "--opt-sdp-attention", "--lowram", "--skip-torch-cuda-test",
                          "--data-dir", str(tmp_path), "--skip-load-model-at-start",
                          "--disable-safe-unpickle"], environ={})
    with caplog.at_level(logging.INFO, logger="sd-studio"):
        ctx = app.build(parsed)
    try:
        lines = [r.getMessage() for r in caplog.records if r.name == "sd-studio"]
        for flag in ("--xformers", "--opt-sdp-attention", "--lowram", "--skip-torch-cuda-test"):
            assert sum(line.startswith(flag + ": ") for line in lines) == 1, lines
        assert ctx.engine.models.current is None  # --skip-load-model-at-start
        assert any(line.startswith("--disable-safe-unpickle: pickled .ckpt/.pt model files will be opened")
                   for line in lines)
        assert ctx.engine.models.allow_unsafe
    finally:
        ctx.engine.shutdown()


def test_implied_and_same_meaning_flags():
    parsed = flags.parse(["--nowebui", "--disable-safe-unpickle", "--ui-debug-mode"], environ={})
    assert parsed.api and parsed.port == 7861  # the API-only server's own port, as in A1111
    assert parsed.allow_unsafe_checkpoints and parsed.skip_load_model_at_start
    assert flags.parse([], environ={}).port == 7860
    assert flags.parse(["--subpath", "/sd/ui/"], environ={}).subpath == "/sd/ui"


def test_sysinfo_hides_passwords_however_the_flag_was_spelt():
    from ui.api.internal_api import redacted, secret_values

    parsed = flags.parse(["--api-au", "alice:s3cret", "--gradio-auth=bob:pw2"], environ={})
    shown = redacted(["app.py", "--api-au", "alice:s3cret", "--gradio-auth=bob:pw2", "--listen"],
                     secret_values(parsed))
    assert shown == ["app.py", "--api-au", "<hidden>", "<hidden>", "--listen"]


def test_secrets_are_hidden_in_cmd_flags():
    parsed = flags.parse(["--ngrok", "token", "--gradio-auth", "a:b"], environ={})
    shown = flags.public_dict(parsed)
    assert shown["ngrok"] == "<hidden>" and shown["gradio_auth"] == "<hidden>"


@pytest.mark.parametrize("args, exposed, host", [
    ([], False, "127.0.0.1"), (["--listen"], True, "0.0.0.0"), (["--server-name", "127.0.0.1"], False, "127.0.0.1"),
    (["--server-name", "localhost"], False, "localhost"), (["--server-name", "192.168.1.5"], True, "192.168.1.5"),
    # Behind a reverse proxy: its requests come from this machine on behalf of anyone.
    (["--subpath", "sd"], True, "127.0.0.1"),
])
def test_server_name_binds_and_counts_as_shared_off_this_machine(args, exposed, host):
    parsed = flags.parse(args, environ={})
    assert flags.is_exposed(parsed) == exposed
    assert flags.listen_host(parsed) == host


def test_folder_flags_move_each_kind_of_file(tmp_path):
    data, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    parsed = flags.parse(["--models-dir", str(tmp_path / "models"), "--lora-dir", str(elsewhere / "loras"),
                          "--vae-dir", str(elsewhere / "vae"), "--embeddings-dir", str(elsewhere / "ti"),
                          "--controlnet-dir", str(elsewhere / "cn"), "--gfpgan-models-path", str(elsewhere / "gf"),
                          "--codeformer-models-path", str(elsewhere / "cf"),
                          "--esrgan-models-path", str(elsewhere / "esr"),
                          "--ui-settings-file", str(elsewhere / "my-config.json"),
                          "--styles-file", str(elsewhere / "a.csv"), "--styles-file", str(elsewhere / "s*.csv")],
                         environ={})
    (elsewhere).mkdir()
    for name in ("s1.csv", "s2.csv"):
        (elsewhere / name).write_text("name,prompt,negative_prompt\n")
    folders = Folders.in_data_dir(data, parsed)
    assert folders.lora == elsewhere / "loras" and folders.vae == elsewhere / "vae"
    assert folders.checkpoints == tmp_path / "models" / "Stable-diffusion"  # under --models-dir
    assert folders.realesrgan == tmp_path / "models" / "RealESRGAN"
    assert folders.settings_file == elsewhere / "my-config.json"
    assert folders.styles_files == (elsewhere / "a.csv", elsewhere / "s1.csv", elsewhere / "s2.csv")
    folders.fill_flags(parsed)
    assert flags.public_dict(parsed)["lora_dir"] == str(elsewhere / "loras")  # clients read this


def test_no_half_vae_precision_and_upcast_sampling_choose_the_precisions():
    half, full = torch.float16, torch.float32
    assert precisions(True) == {"dtype": half, "vae_dtype": None, "half_vae_always": False, "upcast_sampling": False}
    assert precisions(True, no_half_vae=True)["vae_dtype"] == full
    assert precisions(True, precision="full")["dtype"] == full  # everything in 32-bit
    assert precisions(True, no_half=True) == precisions(False)
    assert precisions(True, precision="half")["half_vae_always"]
    assert precisions(True, upcast_sampling=True)["upcast_sampling"]
    assert not precisions(False, upcast_sampling=True)["upcast_sampling"]  # nothing to upcast on a CPU


def test_frozen_settings_name_the_flag(tmp_path):
    settings = Settings(tmp_path / "config.json")
    parsed = flags.parse(["--freeze-specific-settings", "samples_format,jpeg_quality", "--theme", "dark",
                          "--api-log", "--hide-ui-dir-config"], environ={})
    app.apply_setting_flags(settings, parsed)
    with pytest.raises(ForbiddenError, match="samples_format cannot be changed: it is frozen by --freeze-specific"):
        settings.check_editable(["samples_format"])
    with pytest.raises(ForbiddenError, match="--hide-ui-dir-config"):
        settings.check_editable(["outdir_txt2img_samples"])
    settings.check_editable(["CLIP_stop_at_last_layers"])  # the rest stays editable
    assert settings["ui_theme"] == "dark" and settings["api_log_requests"] is True
    assert not (tmp_path / "config.json").exists()  # pinned for this run, not saved
    everything = Settings(tmp_path / "other.json")
    app.apply_setting_flags(everything, flags.parse(["--freeze-settings"], environ={}))
    with pytest.raises(ForbiddenError, match="--freeze-settings"):
        everything.check_editable(["CLIP_stop_at_last_layers"])


@pytest.mark.parametrize("section, frozen, free", [
    ("saving-images", "samples_format", "CLIP_stop_at_last_layers"),
    ("saving-paths", "outdir_txt2img_samples", "samples_format"),
    ("sampler-params", "eta_noise_seed_delta", "samples_format"),
    ("sd", "CLIP_stop_at_last_layers", "eta_noise_seed_delta"),
    ("Sampler parameters", "s_churn", "samples_format"),
])
def test_freezing_a_section_by_its_a1111_id(tmp_path, section, frozen, free):
    settings = Settings(tmp_path / "config.json")
    app.apply_setting_flags(settings, flags.parse(["--freeze-settings-in-sections", section], environ={}))
    with pytest.raises(ForbiddenError):
        settings.check_editable([frozen])
    settings.check_editable([free])


def test_freezing_what_is_not_here_is_said_at_start(tmp_path, caplog):
    settings = Settings(tmp_path / "config.json")
    with caplog.at_level(logging.WARNING, logger="sd-studio"):
        app.apply_setting_flags(settings, flags.parse(["--freeze-settings-in-sections", "nowhere,sd",
                                                       "--freeze-specific-settings", "no_such_key"], environ={}))
    text = caplog.text
    assert "--freeze-settings-in-sections: no settings here in nowhere" in text
    assert "--freeze-specific-settings: not settings of this app (nothing to freeze): no_such_key" in text


def test_every_flag_has_its_key_in_cmd_flags(tmp_path):
    parsed = flags.parse(["--data-dir", str(tmp_path)], environ={})
    keys = set(flags.public_dict(parsed))
    missing = [flag for flag, _, _ in A1111_FLAGS if flag != "-f" and flag.lstrip("-").replace("-", "_") not in keys]
    assert missing == []
    assert "f" in keys


def test_webui_sh_exports_commandline_args_and_knows_a1111s_variables():
    script = (Path(__file__).parent.parent / "webui.sh").read_text()
    assert "export COMMANDLINE_ARGS" in script
    assert "python_cmd" in script and "venv_dir" in script
    assert "--skip-install" in script
