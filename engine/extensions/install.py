"""Installing and updating third-party extensions from a git URL (the Extensions tab).

An install clones the repository with `git clone --depth 1` into a hidden temporary folder under
<data dir>/extensions (the loader skips names starting with "."), checks that it is an extension
(an __init__.py at its top), then renames it into place: a failed install leaves nothing behind.
An update is `git pull --ff-only` in the extension's folder, so local edits are never merged over.

Neither runs the extension's code: a new extension is recorded as disabled before its folder
appears (`keep_disabled`), and the registry lists it without importing it (its code runs at the
first start after a user enables it); an update's code runs at the next start, if enabled.
Installing still puts code from the internet on this machine that one click and a restart will
run, so the UI refuses it while the app is reachable from the network (--listen, --share) unless
--enable-insecure-extension-access says otherwise: see `refusal`.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import urlparse

from engine.errors import RequestError, UserError
from engine.settings.flags import is_exposed

GIT_TIMEOUT = 300  # seconds for one clone or pull; a stalled server must not hang the event
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}")
_SCP_LIKE = re.compile(r"git@[A-Za-z0-9][A-Za-z0-9.-]*:[A-Za-z0-9._~/-]+")
_HAS_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+://")
# Transports git may use (also for anything a repository points at): never `ext::` and the like,
# which run commands.
_PROTOCOLS = "http:https:ssh:git:file"


def refusal(flags: Any) -> str | None:
    """Why installing and updating from the UI is off now, or None when it is allowed."""
    if is_exposed(flags) and not getattr(flags, "enable_insecure_extension_access", False):
        return ("Installing extensions is off because the UI is shared on the network "
                "(--listen/--share): anyone who can reach it could run code on this machine. "
                "Start with --enable-insecure-extension-access to allow it.")
    return None


def check_url(url: str) -> str:
    """The URL, stripped, if it is one git may clone from here; RequestError otherwise."""
    url = (url or "").strip()
    if not url:
        raise RequestError("Enter the URL of the extension's git repository", "url")
    if url.startswith("-") or any(ch.isspace() or ord(ch) < 32 for ch in url) or "::" in url:
        raise RequestError(f"Not a repository URL: {url!r}", "url")
    if _HAS_SCHEME.match(url):
        parsed = urlparse(url)
        if parsed.scheme.lower() in ("http", "https", "file") and parsed.path.strip("/"):
            return url
    elif _SCP_LIKE.fullmatch(url):
        return url
    elif Path(url).is_absolute():  # a repository on this machine
        if not Path(url).is_dir():
            raise RequestError(f"No repository at {url}: the folder does not exist", "url")
        return url
    raise RequestError(f"Not a repository URL: {url!r}. Use https://..., http://..., git@host:path, "
                       "file://... or the absolute path of a local repository", "url")


def name_from_url(url: str) -> str:
    """The folder name an install uses: the URL's last part without .git, made safe."""
    last = re.split(r"[/:\\]", url.rstrip("/\\"))[-1]
    if last.lower().endswith(".git"):
        last = last[:-4]
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", last).strip("-_")[:100]
    if not name:
        raise RequestError(f"Cannot make a folder name from {url!r}: give the extension a name", "name")
    return name


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise RequestError(f"Extension name {name!r} may hold only letters, digits, - and _ (starting "
                           "with a letter or digit, at most 100 characters)", "name")
    return name


def install_from_url(url: str, extensions_dir: Path, name: str | None = None,
                     reserved: Iterable[str] = (),
                     before_placing: Callable[[str], None] | None = None) -> Path:
    """Clone the extension at `url` into extensions_dir/<name>; returns its folder.
    `reserved`: names already taken elsewhere (the built-in extensions). `before_placing(name)`
    runs once the clone is checked, before the folder appears under its name: if it raises,
    nothing is installed."""
    url = check_url(url)
    name = check_name(name.strip() if name and name.strip() else name_from_url(url))
    extensions_dir = Path(extensions_dir)
    target = extensions_dir / name
    if name.lower() in {r.lower() for r in reserved}:
        raise UserError(f"'{name}' is the name of a built-in extension: give this one another name", "name")
    if target.exists():
        raise UserError(f"An extension named '{name}' is already installed (in {target}). Update it, "
                        "or give this one another name", "name")
    extensions_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".installing-", dir=extensions_dir))
    try:
        clone = staging / name
        _git(["clone", "--depth", "1", "--quiet", "--", url, str(clone)], staging, f"Could not clone {url}")
        if not (clone / "__init__.py").is_file():
            raise UserError(f"{url} is not an extension: it has no __init__.py at its top. An extension "
                            "is a folder whose __init__.py exports `extension` (see docs/extensions.md)",
                            "url")
        if target.exists():  # installed meanwhile by someone else
            raise UserError(f"An extension named '{name}' is already installed (in {target})", "name")
        if before_placing is not None:
            before_placing(name)
        clone.rename(target)
    finally:
        _remove_tree(staging)
    return target


def update(name: str, extensions_dir: Path) -> str:
    """`git pull --ff-only` in a third-party extension's folder; returns what happened."""
    folder = _installed(name, extensions_dir)
    before = _head(folder)
    _git(["pull", "--ff-only", "--quiet"], folder, f"Could not update {name}")
    after = _head(folder)
    if after == before:
        return f"{name} is already up to date ({before})."
    return (f"Updated {name}: {before} -> {after}. The new code has not run: restart the web UI to use "
            "it (an extension's code runs at start, when it is enabled).")


def check_updates(name: str, extensions_dir: Path) -> bool:
    """Whether the extension's remote branch has commits its folder does not have."""
    folder = _installed(name, extensions_dir)
    _git(["fetch", "--quiet"], folder, f"Could not check {name} for updates")
    behind = _git(["rev-list", "--count", "HEAD..@{upstream}"], folder, f"Could not check {name}")
    return int(behind.strip() or 0) > 0


def updatable(extensions_dir: Path) -> list[str]:
    """The extensions in the folder that came from git (and so can be updated)."""
    folder = Path(extensions_dir)
    if not folder.is_dir():
        return []
    return sorted(child.name for child in folder.iterdir()
                  if child.is_dir() and not child.name.startswith((".", "_")) and (child / ".git").exists())


def _installed(name: str, extensions_dir: Path) -> Path:
    name = check_name((name or "").strip())
    folder = Path(extensions_dir) / name
    if not folder.is_dir():
        raise UserError(f"No third-party extension named '{name}' in {extensions_dir} (built-in "
                        "extensions are updated with the app)", "name")
    if not (folder / ".git").exists():
        raise UserError(f"{name} was not installed from git, so it cannot be updated here", "name")
    return folder


def _head(folder: Path) -> str:
    return _git(["rev-parse", "--short", "HEAD"], folder, "Could not read the extension's version").strip()


def _git(args: list[str], cwd: Path, failure: str) -> str:
    """Run git with no prompts, no shell and a time limit; UserError with git's last word on failure."""
    git = shutil.which("git")
    if git is None:
        raise UserError("git is not installed (or not on PATH): install git to install or update "
                        "extensions from the UI")
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0", GIT_ALLOW_PROTOCOL=_PROTOCOLS)
    # ssh would ask for a password or a host key confirmation on a terminal nobody watches.
    env.setdefault("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
    try:
        done = subprocess.run([git, *args], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=GIT_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise UserError(f"{failure}: git took longer than {GIT_TIMEOUT} s") from None
    except OSError as error:
        raise UserError(f"{failure}: could not run git ({error.strerror or error})") from None
    if done.returncode != 0:
        raise UserError(f"{failure}: {_last_word(done.stderr) or f'git exited with {done.returncode}'}")
    return done.stdout


def _last_word(stderr: str) -> str:
    """git's last error line; its advice lines after it ("Please make sure...") say less."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(("fatal:", "error:"))]
    return (errors or lines or [""])[-1]


def _remove_tree(path: Path) -> None:
    """Delete a folder, git's read-only object files included (Windows refuses those otherwise)."""
    for root, _dirs, files in os.walk(path):
        for file in files:
            try:
                os.chmod(os.path.join(root, file), stat.S_IWRITE | stat.S_IREAD)
            except OSError:
                pass
    shutil.rmtree(path, ignore_errors=True)


def keep_disabled(settings: Any, name: str) -> None:
    """Add `name` to the `disabled_extensions` setting (saved at once): a new extension is not
    trusted yet, so no start imports it until a user enables it."""
    disabled = set(settings["disabled_extensions"])
    if name not in disabled:
        settings.update({"disabled_extensions": sorted(disabled | {name})})


def source(folder: Path) -> tuple[str, str] | None:
    """(where it was cloned from, its commit) for an extension folder made by git; None for
    one made by hand or when git cannot say."""
    if not (Path(folder) / ".git").exists():
        return None
    try:
        remote = _git(["config", "--get", "remote.origin.url"], folder, "no remote").strip()
        return _without_credentials(remote), _head(folder)
    except UserError:
        return None


def _without_credentials(url: str) -> str:
    """The URL as the UI may show it: a user:token@ part (a private repository) left out."""
    parsed = urlparse(url)
    if parsed.scheme and "@" in parsed.netloc:
        return parsed._replace(netloc=parsed.netloc.rsplit("@", 1)[1]).geturl()
    return url
