"""The test tiers, in one place: which tests are `slow`.

`./test.sh` runs the fast tier (`-m "not slow"`): everything below is left out. `./test.sh --all`
(what CI runs) runs every test. tests/conftest.py marks the tests named here; test_tiers.py checks
that every name still names a test, so a renamed or deleted test cannot silently fall out of a tier.

What makes a test slow here: it drives Chromium, starts the app as its own process (or several),
or runs long (the face detailer on a 512-pixel picture, the sampling reference tables, the API
fuzz). Everything else is fast, including the API tests against the one shared demo server (one
app process for the whole run) and those against servers built in the test process
(tests/support/server.py's InProcessServer).
"""

from __future__ import annotations

SLOW = "slow"

# Whole files, by file name under tests/, with why.
SLOW_FILES: dict[str, str] = {
    # Chromium through Playwright.
    "test_browser.py": "Chromium",
    "test_browser_controlnet.py": "Chromium",
    "test_browser_flow.py": "Chromium",
    "test_browser_history.py": "Chromium",
    "test_browser_img2img.py": "Chromium",
    "test_browser_merger.py": "Chromium",
    "test_browser_ip_adapter.py": "Chromium",
    "test_browser_model_offer.py": "Chromium",
    "test_browser_settings.py": "Chromium, and an app process of its own",
    "test_browser_ui_bugs.py": "Chromium",
    "test_browser_walk.py": "Chromium",
    # Long runs.
    "test_a1111_sampling_reference.py": "every sampler against k-diffusion's reference tables",
    "test_api_fuzz.py": "hostile values in every field of every route, about a minute",
    # App processes of their own (what is tested is the started app: its flags, its login, its
    # listening on the network).
    "test_a1111_server_flags.py": "starts the app once per set of flags",
    "test_lan_security.py": "starts the app listening on the network, with TLS",
    "test_login_hardening.py": "starts the app with a login",
    "test_bench.py": "the benchmark starts the app on a checkpoint it writes",
    "test_cluster_ray.py": "a Ray head, the studio and two worker processes",
}

# Single tests, as "file.py::test_name" (every parametrisation of that test).
SLOW_TESTS: dict[str, str] = {
    "test_crash_safety.py::test_kill_9_mid_job_leaves_only_whole_files_and_the_next_start_works":
        "starts the app twice and kills it",
    "test_extension_install.py::test_an_installed_extension_runs_no_code_until_enabled_and_restarted":
        "starts the app twice",
    "test_extension_install.py::test_a_shared_app_refuses_to_install_even_when_the_button_is_bypassed":
        "Chromium and an app process",
    "test_extension_install.py::test_with_insecure_extension_access_the_tab_installs_and_updates":
        "Chromium and an app process",
    "test_extension_install.py::test_a_failed_install_shows_gits_words_as_written": "Chromium",
    "test_oom.py::test_the_api_answers_507_with_the_message_and_the_next_request_works":
        "starts the app with a fault injected from its environment",
    "test_oom.py::test_extras_face_restoration_runs_out_then_works": "three face detailer runs",
    "test_faces.py::test_extras_restores_faces_only_where_they_are": "a face detailer run",
    "test_users.py::test_one_browser_sessions_interrupt_leaves_anothers_job_alone": "Chromium",
    "test_auth_and_no_model.py::test_browser_login_then_the_no_model_notice": "Chromium",
    "test_auth_and_no_model.py::test_download_offer_streams_with_progress_and_refuses_a_wrong_file":
        "Chromium and an app process",
}


def is_slow(file_name: str, test_name: str) -> bool:
    """`test_name`: the test function's name, without parameters."""
    return file_name in SLOW_FILES or f"{file_name}::{test_name}" in SLOW_TESTS


# Fixtures that start Chromium: a test using one is slow wherever it lives (a new browser test
# needs no entry above).
CHROMIUM_FIXTURES = frozenset({"browser", "page"})


def item_is_slow(item) -> bool:
    """A collected test is slow when the lists name it or it uses a Chromium fixture."""
    name = getattr(item, "originalname", None) or item.name.split("[", 1)[0]
    return is_slow(item.path.name, name) or bool(CHROMIUM_FIXTURES & set(getattr(item, "fixturenames", ())))


def mark(items, marker) -> None:
    """Add `marker` (pytest.mark.slow) to the collected items that are in the slow tier."""
    for item in items:
        if item_is_slow(item):
            item.add_marker(marker)
