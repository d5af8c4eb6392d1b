"""Installing and updating third-party extensions from git: real repositories made in tmp_path,
cloned by path; and the Extensions tab of the real app, which refuses to install while shared
on the network unless --enable-insecure-extension-access says otherwise. An install or an update
never runs the extension's code: it runs at a start where the extension is enabled."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path

import httpx
import pytest

from engine.extensions import install as extension_install
from engine.errors import RequestError, UserError
from engine.extensions.install import install_from_url, refusal, update
from engine.extensions.registry import ExtensionRegistry
from engine.settings.flags import parse
from engine.settings.store import Settings

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")

EXTENSION_CODE = '''"""A test extension installed from git."""
from engine.extensions.registry import Extension, Field

VERSION = {version!r}


class Sparkle(Extension):
    name = "sparkle"
    title = "Sparkle"
    fields = (Field("enabled", "Sparkle", False),)


extension = Sparkle()
'''


def git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=Test", "-c", "user.email=test@example.com",
                           "-c", "init.defaultBranch=main", *args], cwd=folder, check=True,
                          capture_output=True, text=True).stdout


def commit(repo: Path, files: dict[str, str], message: str = "change") -> None:
    for name, text in files.items():
        (repo / name).write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)


def make_repo(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True)
    git(folder, "init", "-q")
    commit(folder, files, "first")
    return folder


@pytest.fixture
def origin(tmp_path) -> Path:
    """A local repository holding an extension at its top, as published extensions are."""
    return make_repo(tmp_path / "origin" / "sparkle-ext.git",
                     {"__init__.py": EXTENSION_CODE.format(version=1), "README.md": "sparkle\n"})


@pytest.fixture
def extensions_dir(tmp_path) -> Path:
    folder = tmp_path / "data" / "extensions"
    folder.mkdir(parents=True)
    return folder


def leftovers(folder: Path) -> list[str]:
    return sorted(child.name for child in folder.iterdir())


def test_install_clones_into_the_extensions_folder_and_the_registry_lists_it_unloaded(origin, extensions_dir):
    registry = ExtensionRegistry([(extensions_dir, False)])
    assert registry.find("sparkle") is None
    path = install_from_url(str(origin), extensions_dir)
    assert path == extensions_dir / "sparkle-ext"  # the URL's last part without .git
    assert (path / "__init__.py").is_file() and (path / ".git").is_dir()
    assert leftovers(extensions_dir) == ["sparkle-ext"]  # no staging folder left behind
    [entry] = registry.discover()
    assert entry.path == path and entry.status == "not loaded" and entry.waiting and not entry.enabled
    assert registry.find("sparkle") is None and registry.discover() == []  # listed once, never imported
    assert [e.name for e in registry.choosable()] == ["sparkle-ext"]
    with pytest.raises(RequestError, match="'sparkle-ext' is installed but not loaded: enable it"):
        registry.check("txt2img", {"sparkle-ext": {"enabled": True}})
    assert extension_install.source(path) == (str(origin), extension_install._head(origin))


def test_before_placing_runs_before_the_folder_appears_and_can_stop_the_install(origin, extensions_dir):
    seen = []
    install_from_url(str(origin), extensions_dir, before_placing=lambda name: seen.append(
        (name, (extensions_dir / name).exists())))
    assert seen == [("sparkle-ext", False)]

    def refuse(name):
        raise UserError("cannot record it")
    with pytest.raises(UserError, match="cannot record it"):
        install_from_url(str(origin), extensions_dir, name="other", before_placing=refuse)
    assert leftovers(extensions_dir) == ["sparkle-ext"]


def test_a_source_url_with_credentials_is_shown_without_them():
    assert extension_install._without_credentials("https://user:secret@example.com/a/b.git") == \
        "https://example.com/a/b.git"
    assert extension_install._without_credentials("git@github.com:someone/x.git") == "git@github.com:someone/x.git"


HOSTILE_CODE = '''"""An extension that acts as soon as it is imported, as a hostile one could."""
from pathlib import Path

from engine.extensions.registry import Extension

Path({marker!r}).write_text("imported")


class Hostile(Extension):
    name = "hostile"

    def attach(self, addons):
        Path({marker!r} + ".attached").write_text("attached")


extension = Hostile()
'''


def test_start_imports_enabled_third_party_extensions_only(tmp_path, extensions_dir):
    marker = tmp_path / "marker"
    make_repo(tmp_path / "origin" / "hostile-ext", {"__init__.py": HOSTILE_CODE.format(marker=str(marker))})
    git(extensions_dir, "clone", "-q", str(tmp_path / "origin" / "hostile-ext"))
    registry = ExtensionRegistry([(extensions_dir, False)], disabled={"hostile-ext"})
    assert not marker.exists() and registry.entries[0].status == "not loaded"
    registry.discover()  # finding folders again imports nothing either
    assert not marker.exists()
    assert ExtensionRegistry([(extensions_dir, False)], disabled=set()).find("hostile") is not None
    assert marker.read_text() == "imported"


def _gradio_table(outputs: list) -> str:
    """The Extensions table's HTML among an event's outputs."""
    return next(o for o in outputs if isinstance(o, str) and "extensions-table" in o)


def test_an_installed_extension_runs_no_code_until_enabled_and_restarted(tmp_path):
    """Installed through the Extensions tab's event, as the page sends it: nothing of the
    extension runs at install, nor when it is enabled, nor at a start where it is still
    disabled; it runs at the first start where it is enabled."""
    from tests.support.server import AppServer

    marker = tmp_path / "marker"
    origin = make_repo(tmp_path / "origin" / "hostile-ext", {"__init__.py": HOSTILE_CODE.format(marker=str(marker))})
    commit_id = extension_install._head(origin)
    data = tmp_path / "app"
    with AppServer(data, "--demo", "--api") as server:
        outputs = _gradio_call(server.url, "extension_install", [str(origin), ""])
        assert not marker.exists(), "installing imported the extension"
        assert "Its code has not run" in outputs[-1] and commit_id in outputs[-1]
        table = _gradio_table(outputs)
        assert "hostile-ext" in table and str(origin) in table and commit_id in table
        assert "installed, not loaded" in table
        listed = {e["name"]: e for e in httpx.get(server.url + "/sdapi/v1/extensions").json()}
        assert listed["hostile-ext"]["status"] == "not loaded" and not listed["hostile-ext"]["enabled"]
        assert "hostile-ext" in Settings(data / "config.json")["disabled_extensions"]
        # Enabling it is saved; its code waits for a restart.
        assert httpx.post(server.url + "/sdapi/v1/options", json={"disabled_extensions": []}).status_code == 200
        outputs = _gradio_call(server.url, "extensions_refresh", [])
        assert "enabled, not loaded" in _gradio_table(outputs) and not marker.exists()
    with AppServer(data, "--demo", "--api") as server:
        assert marker.read_text() == "imported" and (tmp_path / "marker.attached").exists()
        listed = {e["name"]: e for e in httpx.get(server.url + "/sdapi/v1/extensions").json()}
        assert listed["hostile-ext"]["status"] == "enabled"


def test_install_from_a_file_url_with_a_chosen_name(origin, extensions_dir):
    path = install_from_url(f"file://{origin}", extensions_dir, name="my_sparkle")
    assert path == extensions_dir / "my_sparkle" and (path / "__init__.py").is_file()


@pytest.mark.parametrize("url", [
    "ftp://example.com/repo.git",
    "; rm -rf /",
    "--upload-pack=touch {sentinel}",
    "-uhelp",
    "ext::sh -c touch% {sentinel}",
    "https://",
    "relative/folder",
    "git@host:repo; touch {sentinel}",
    "",
])
def test_urls_that_are_not_repositories_are_refused_before_git_runs(url, extensions_dir, tmp_path,
                                                                      monkeypatch):
    sentinel = tmp_path / "pwned"
    ran = []
    monkeypatch.setattr(extension_install.subprocess, "run", lambda *a, **k: ran.append(a))
    with pytest.raises(RequestError):
        install_from_url(url.format(sentinel=sentinel), extensions_dir)
    assert not ran and not sentinel.exists()
    assert leftovers(extensions_dir) == []


def test_an_option_injected_through_a_local_path_is_never_a_git_option(extensions_dir, tmp_path):
    # An absolute path cannot start with "-"; and git gets "--" before the URL in any case.
    sentinel = tmp_path / "pwned"
    with pytest.raises(RequestError):
        install_from_url(f"--upload-pack=touch {sentinel}", extensions_dir, name="x")
    assert not sentinel.exists()


@pytest.mark.parametrize("name", ["../x", "a/b", "..", ".hidden", "_private", "a b", "x" * 101, "c:d"])
def test_names_that_could_escape_or_hide_are_refused(name, origin, extensions_dir):
    with pytest.raises(RequestError, match="may hold only letters, digits"):
        install_from_url(str(origin), extensions_dir, name=name)
    assert leftovers(extensions_dir) == []
    assert not (extensions_dir.parent / "x").exists()


def test_a_name_is_made_safe_from_the_url():
    assert extension_install.name_from_url("https://github.com/someone/sd-webui-thing.git") == "sd-webui-thing"
    assert extension_install.name_from_url("git@github.com:someone/my.ext.git") == "my-ext"
    assert extension_install.name_from_url("https://example.com/a/b/") == "b"
    with pytest.raises(RequestError, match="give the extension a name"):
        extension_install.name_from_url("https://example.com/...git")


def test_installing_twice_is_refused_and_keeps_the_first(origin, extensions_dir):
    path = install_from_url(str(origin), extensions_dir)
    (path / "local-note.txt").write_text("mine")
    with pytest.raises(UserError, match="already installed"):
        install_from_url(str(origin), extensions_dir)
    assert (path / "local-note.txt").read_text() == "mine"
    assert leftovers(extensions_dir) == ["sparkle-ext"]


def test_a_built_in_name_is_refused(origin, extensions_dir):
    with pytest.raises(UserError, match="built-in extension"):
        install_from_url(str(origin), extensions_dir, name="tiling", reserved=["tiling"])


def test_a_repository_that_is_not_an_extension_leaves_nothing_behind(tmp_path, extensions_dir):
    repo = make_repo(tmp_path / "just-docs", {"README.md": "no code here\n"})
    with pytest.raises(UserError, match="not an extension: it has no __init__.py"):
        install_from_url(str(repo), extensions_dir)
    assert leftovers(extensions_dir) == []


def test_a_failed_clone_says_what_git_said(tmp_path, extensions_dir):
    not_a_repo = tmp_path / "empty-folder"
    not_a_repo.mkdir()
    with pytest.raises(UserError, match=r"Could not clone .*: fatal: .*"):
        install_from_url(str(not_a_repo), extensions_dir)
    with pytest.raises(RequestError, match="the folder does not exist"):
        install_from_url(str(tmp_path / "missing"), extensions_dir)
    assert leftovers(extensions_dir) == []


def test_missing_git_is_named(origin, extensions_dir, monkeypatch):
    monkeypatch.setattr(extension_install.shutil, "which", lambda name: None)
    with pytest.raises(UserError, match="git is not installed"):
        install_from_url(str(origin), extensions_dir)
    assert leftovers(extensions_dir) == []


def test_update_pulls_new_commits_fast_forward_only(origin, extensions_dir):
    path = install_from_url(str(origin), extensions_dir)
    assert "already up to date" in update("sparkle-ext", extensions_dir)
    assert extension_install.check_updates("sparkle-ext", extensions_dir) is False
    commit(origin, {"__init__.py": EXTENSION_CODE.format(version=2)}, "version 2")
    assert extension_install.check_updates("sparkle-ext", extensions_dir) is True
    message = update("sparkle-ext", extensions_dir)
    assert message.startswith("Updated sparkle-ext:") and "has not run: restart" in message
    assert "VERSION = 2" in (path / "__init__.py").read_text()
    # A local commit and a new upstream one have diverged: no merge is made behind the user's back.
    commit(path, {"local.txt": "mine"}, "local change")
    commit(origin, {"__init__.py": EXTENSION_CODE.format(version=3)}, "version 3")
    with pytest.raises(UserError, match="Could not update sparkle-ext: .*"):
        update("sparkle-ext", extensions_dir)
    assert "VERSION = 2" in (path / "__init__.py").read_text() and (path / "local.txt").exists()


def test_only_third_party_extensions_from_git_can_be_updated(extensions_dir):
    with pytest.raises(UserError, match="No third-party extension named 'tiling'"):
        update("tiling", extensions_dir)
    (extensions_dir / "hand-made").mkdir()
    (extensions_dir / "hand-made" / "__init__.py").write_text("")
    with pytest.raises(UserError, match="not installed from git"):
        update("hand-made", extensions_dir)
    with pytest.raises(RequestError):
        update("../data", extensions_dir)
    assert extension_install.updatable(extensions_dir) == []


@pytest.mark.parametrize("argv, allowed", [
    ([], True), (["--listen"], False), (["--share"], False),
    (["--listen", "--enable-insecure-extension-access"], True),
    (["--share", "--enable-insecure-extension-access"], True),
])
def test_installing_is_refused_while_shared_on_the_network(argv, allowed):
    reason = refusal(parse(argv, environ={}))
    assert (reason is None) == allowed
    if not allowed:
        assert "--listen/--share" in reason and "--enable-insecure-extension-access" in reason


# The real app: the Extensions tab in a browser, and a client that ignores the disabled button.
def _gradio_call(url: str, elem_id: str, data: list) -> list:
    """Trigger the click event of the component `elem_id` the way the page does (the queue
    protocol), without a browser: what anyone on the network could send."""
    with httpx.Client(base_url=url, timeout=120) as client:
        config = client.get("/config").json()
        ids = [c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == elem_id]
        event = next(d for d in config["dependencies"] if any(t[0] in ids for t in d["targets"]))
        session = uuid.uuid4().hex
        joined = client.post("/gradio_api/queue/join", json={
            "data": data, "fn_index": event["id"], "trigger_id": ids[0], "session_hash": session})
        assert joined.status_code == 200, joined.text
        with client.stream("GET", "/gradio_api/queue/data", params={"session_hash": session}) as events:
            for line in events.iter_lines():
                if line.startswith("data:"):
                    message = json.loads(line[5:])
                    if message.get("msg") == "process_completed":
                        assert message["success"], message
                        return message["output"]["data"]
    raise AssertionError("the event did not complete")


def _open_extensions_tab(page, url: str) -> None:
    page.goto(url)
    page.click("#tab_extensions-button")
    page.locator("#extension_install_section").wait_for()


def test_a_shared_app_refuses_to_install_even_when_the_button_is_bypassed(tmp_path, page):
    from tests.support.server import AppServer

    origin = make_repo(tmp_path / "origin" / "sparkle-ext", {"__init__.py": EXTENSION_CODE.format(version=1)})
    other = make_repo(tmp_path / "origin" / "other-ext", {"__init__.py": EXTENSION_CODE.format(version=1)})
    data = tmp_path / "shared-app"
    (data / "extensions").mkdir(parents=True)
    installed = data / "extensions" / "sparkle-ext"
    git(data / "extensions", "clone", "-q", str(origin), str(installed))  # installed by hand earlier
    commit(origin, {"__init__.py": EXTENSION_CODE.format(version=2)}, "version 2")
    with AppServer(data, "--demo", "--listen") as server:
        _open_extensions_tab(page, server.url)
        assert "--enable-insecure-extension-access" in page.locator("#extension_install_refused").inner_text()
        assert page.locator("#extension_install").is_disabled()
        assert page.locator("#extension_update").is_disabled()
        outputs = _gradio_call(server.url, "extension_install", [str(other), ""])
        assert "Installing extensions is off because the UI is shared on the network" in outputs[-1]
        assert not (data / "extensions" / "other-ext").exists()
        outputs = _gradio_call(server.url, "extension_update", ["sparkle-ext"])
        assert "Installing extensions is off" in outputs[-1]
        assert "VERSION = 1" in (installed / "__init__.py").read_text()


def test_with_insecure_extension_access_the_tab_installs_and_updates(tmp_path, page):
    from tests.support.server import AppServer

    origin = make_repo(tmp_path / "origin" / "sparkle-ext", {"__init__.py": EXTENSION_CODE.format(version=1)})
    data = tmp_path / "trusted-app"
    with AppServer(data, "--demo", "--listen", "--enable-insecure-extension-access") as server:
        _open_extensions_tab(page, server.url)
        assert page.locator("#extension_install_refused").count() == 0
        page.locator("#extension_install_url textarea, #extension_install_url input").first.fill(str(origin))
        page.click("#extension_install")
        result = page.locator("#extension_install_result")
        result.get_by_text("Installed sparkle-ext").wait_for()
        assert "Its code has not run" in result.inner_text() and "restart the web UI" in result.inner_text()
        assert (data / "extensions" / "sparkle-ext" / "__init__.py").is_file()
        page.locator("#extensions_table").get_by_text("installed, not loaded", exact=False).wait_for()
        assert not page.locator("#extensions_enabled").get_by_label("sparkle-ext").is_checked()

        commit(origin, {"__init__.py": EXTENSION_CODE.format(version=2)}, "version 2")
        page.locator("#extension_update_name input").click()
        page.get_by_role("option", name="sparkle-ext").click()
        page.click("#extension_update")
        page.locator("#extension_update_result").get_by_text("Updated sparkle-ext").wait_for()
        assert "VERSION = 2" in (data / "extensions" / "sparkle-ext" / "__init__.py").read_text()
        # A second install of the same name is refused with a message, the page keeps working.
        page.click("#extension_install")
        result.get_by_text("already installed").wait_for()


def test_a_failed_install_shows_gits_words_as_written(page, demo_server):
    """git's answer quotes the URL; shown through Markdown, the quote after it once came out as a
    literal &#x27; (escaped for HTML, then again inside the link Markdown made of the URL)."""
    from tests.support.server import free_port

    url = f"http://127.0.0.1:{free_port()}/nothing-here.git"  # nothing listens: git is refused
    _open_extensions_tab(page, demo_server.url)
    page.locator("#extension_install_url textarea, #extension_install_url input").first.fill(url)
    page.click("#extension_install")
    result = page.locator("#extension_install_result")
    result.get_by_text("Not installed").wait_for()
    text = result.inner_text()
    assert f"Could not clone {url}" in text and f"'{url}/'" in text, text
    assert "&#" not in text and "&amp;" not in text and "&quot;" not in text, text
