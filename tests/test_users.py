"""Two users on one server: each sees and stops only their own jobs, through the API (two
--api-auth logins) and in the browser (two sessions).

The server runs in this process (the process is not what is tested), so a test can hold a job at
a live preview on the server's worker thread: what each user sees is checked while the job is
known to be running, never by hoping a long job is still running."""

import json
import threading
import time

import httpx
import pytest

from engine.jobs import Job
from tests.support.server import InProcessServer
from tests.test_browser import prepare_small_job, set_number

SLOW = {"prompt": "a slow lighthouse", "steps": 150, "width": 128, "height": 128, "n_iter": 3}
QUICK = {"prompt": "a quick cat", "steps": 3, "width": 64, "height": 64}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with InProcessServer(tmp_path_factory.mktemp("users"), "--demo", "--api", "--api-auth", "alice:a,bob:b") as app:
        yield app


class PreviewGate:
    """Holds the job with the given id (any job, for None) on the server's worker thread each
    time it has made a live preview, until the test lets it run on to its next one
    (`run_to_next_preview`) or the job is told to stop (interrupt, skip)."""

    def __init__(self, job_id: str | None):
        self.job_id = job_id
        self._changed = threading.Condition()
        self._holds = 0        # how many times the job has been held so far
        self._go = False
        self._open = False

    def at_preview(self, job: Job) -> None:
        if self.job_id is not None and job.id != self.job_id:
            return
        with self._changed:
            self._holds += 1
            self._changed.notify_all()
            # A stop request only sets a flag on the job, so look at it now and then.
            while not (self._go or self._open or job.should_stop_sampling):
                self._changed.wait(0.02)
            self._go = False

    def wait_held(self, after: int = 0, timeout: float = 120) -> int:
        """Wait until the job is held for the (after + 1)-th time; returns how many holds so far."""
        with self._changed:
            if not self._changed.wait_for(lambda: self._holds > after, timeout):
                raise AssertionError(f"job {self.job_id} made no live preview in {timeout}s")
            return self._holds

    def run_to_next_preview(self) -> int:
        with self._changed:
            self._go = True
            self._changed.notify_all()
            return self._holds

    def open(self) -> None:
        with self._changed:
            self._open = True
            self._changed.notify_all()


@pytest.fixture
def gate(monkeypatch):
    """Job "alice-slow" (or whatever a test sets `gate.job_id` to) is held at each live preview."""
    gate = PreviewGate("alice-slow")
    original = Job.set_preview

    def set_preview(job, image):
        original(job, image)
        gate.at_preview(job)

    monkeypatch.setattr(Job, "set_preview", set_preview)
    yield gate
    gate.open()  # never leave the server's worker waiting on a test that has ended


def client(server, user: str, password: str) -> httpx.Client:
    return httpx.Client(base_url=server.url + "/sdapi/v1", auth=(user, password), timeout=120)


@pytest.fixture
def alice(server):
    with client(server, "alice", "a") as api:
        yield api


@pytest.fixture
def bob(server):
    with client(server, "bob", "b") as api:
        yield api


def in_background(api: httpx.Client, body: dict) -> dict:
    """POST txt2img on a thread; the returned dict gets "response" when it answers."""
    outcome: dict = {}

    def post():
        outcome["response"] = api.post("/txt2img", json=body)

    outcome["thread"] = threading.Thread(target=post)
    outcome["thread"].start()
    return outcome


def answer(outcome: dict, timeout: float = 120) -> tuple[dict, dict]:
    """The background request's body and its info."""
    outcome["thread"].join(timeout)
    response = outcome["response"]
    assert response.status_code == 200, response.text
    return response.json(), json.loads(response.json()["info"])


def wait_for(probe, timeout: float = 60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {probe}")


def progress(api: httpx.Client) -> dict:
    return api.get("/progress").json()


def test_api_users_see_and_stop_only_their_own_jobs(alice, bob, gate):
    slow = in_background(alice, {**SLOW, "force_task_id": "alice-slow"})
    held = gate.wait_held()  # alice's job runs, held at its first live preview
    assert progress(alice)["current_task"] == "alice-slow" and progress(alice)["state"]["sampling_step"]
    # bob has no job: he sees the lane busy with alice's, but never her picture.
    watching = progress(bob)
    assert watching["current_task"] == "alice-slow" and watching["current_image"] is None

    second = in_background(alice, {**QUICK, "force_task_id": "alice-2"})
    wait_for(lambda: alice.get("/progress", params={"id_task": "alice-2"}).json()["queue_position"])
    mine = in_background(bob, {**QUICK, "force_task_id": "bob-1"})
    waiting = wait_for(lambda: (p := progress(bob))["current_task"] == "bob-1" and p)
    # alice's second job had its turn before bob asked; bob's comes next, before any later one.
    assert waiting["queue_position"] == 2 and waiting["textinfo"] == "In queue: 2 of 2"
    assert waiting["progress"] == 0 and waiting["current_image"] is None

    # The slow job is held at a preview: each looks at the same running job.
    for _ in range(3):
        hers, his = progress(alice), progress(bob)
        assert hers["current_task"] == "alice-slow" and his["current_task"] == "bob-1"
        assert his["current_image"] is None, "bob never gets alice's preview"
        assert hers["current_image"] is not None, "alice sees her own live preview"

    step = progress(alice)["state"]["sampling_step"]
    assert bob.post("/skip").status_code == 200 and bob.post("/interrupt").status_code == 200
    body, info = answer(mine, 10)  # bob's waiting job ends at once, with nothing made
    assert info["interrupted"] is True and body["images"] == []
    # bob's stop left alice's job alone: let it on to its next preview, where it is held again.
    gate.run_to_next_preview()
    gate.wait_held(after=held)
    hers = progress(alice)
    assert hers["state"]["sampling_step"] > step + 2
    assert hers["current_task"] == "alice-slow"
    assert not hers["state"]["interrupted"] and not hers["state"]["skipped"]

    later = in_background(bob, {**QUICK, "force_task_id": "bob-2", "seed": 5})
    wait_for(lambda: progress(bob)["current_task"] == "bob-2")
    assert alice.post("/interrupt").status_code == 200  # her running job and her waiting one
    _, info = answer(slow)
    assert info["interrupted"] is True and len(info["all_seeds"]) == 1
    body, info = answer(second)
    assert info["interrupted"] is True and body["images"] == []
    body, info = answer(later)
    assert info["interrupted"] is False and info["all_seeds"] == [5] and len(body["images"]) == 1
    idle = progress(alice)
    assert idle["progress"] == 0 and idle["state"]["job"] == "" and idle["current_task"] is None


def test_a_job_named_by_id_task_shows_its_picture_only_to_its_owner(alice, bob, gate):
    gate.job_id = "alice-named"
    slow = in_background(alice, {**SLOW, "force_task_id": "alice-named"})
    gate.wait_held()
    own = alice.get("/progress", params={"id_task": "alice-named"}).json()
    assert own["current_task"] == "alice-named" and own["current_image"]
    other = bob.get("/progress", params={"id_task": "alice-named"}).json()
    assert other["current_task"] == "alice-named" and other["current_image"] is None
    assert bob.post("/interrupt").status_code == 200
    assert not alice.get("/progress").json()["state"]["interrupted"]
    alice.post("/interrupt")
    assert answer(slow)[1]["interrupted"] is True


@pytest.fixture
def two_pages(browser):
    contexts = [browser.new_context(viewport={"width": 1400, "height": 1000}) for _ in range(2)]
    pages = [context.new_page() for context in contexts]
    for page in pages:
        page.set_default_timeout(60_000)
    yield pages
    for context in contexts:
        context.close()


def test_one_browser_sessions_interrupt_leaves_anothers_job_alone(two_pages, server, gate):
    gate.job_id = None  # the first job to make a preview is the first user's: held there
    first, second = two_pages
    prepare_small_job(first, server.url, "the first user's lighthouse")
    prepare_small_job(second, server.url, "the second user's cat")
    for name, value in (("steps", 150), ("width", 192), ("height", 192), ("batch_count", 3)):
        set_number(first, f"txt2img_{name}", value)  # many previews: it is held at its first one
    first.click("#txt2img_generate")
    first.locator("#txt2img_progress .progress-bar").wait_for()
    gate.wait_held()
    second.click("#txt2img_generate")
    second.locator("#txt2img_progress").get_by_text("In queue: 1 of 1").wait_for()
    assert first.locator("#txt2img_progress").get_by_text("In queue").count() == 0
    # The second user gives up waiting: only their job stops.
    second.click("#txt2img_interrupt")
    second.locator("#txt2img_message").get_by_text("Interrupted").wait_for()
    assert second.locator("#txt2img_infotext textarea").input_value() == ""
    assert first.locator("#txt2img_progress .progress-bar").count() == 1, "the first job still runs"
    assert "Interrupted" not in first.locator("#txt2img_message").inner_text()
    first.click("#txt2img_interrupt")
    first.locator("#txt2img_message").get_by_text("Interrupted").wait_for()
    assert "the first user's lighthouse" in first.locator("#txt2img_infotext textarea").input_value()
