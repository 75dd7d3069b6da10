"""Webhooks: each job that ends and each task that fails for good is one signed POST per URL,
recorded with the state change (a manager that dies sends it after restart, once), retried with
backoff until a 2xx, never sent again after one, and never waited on by the manager's loop (a
real Valkey, SQLite, a real HTTP server in a thread; the manager driven tick by tick)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import wait_for
from nodekit import ActingNode, enroll_in_process
from sqlalchemy import select
from test_manager_loop import in_process_manager

from renderfarm import streams, webhooks
from renderfarm.clock import SteppedClock
from renderfarm.config import effective_settings, load_settings
from renderfarm.db import session_scope
from renderfarm.doctor import CheckStatus, check_webhooks
from renderfarm.errors import ConfigError, InputError
from renderfarm.keys import CONTROL_STREAM
from renderfarm.manager import notifier
from renderfarm.models import Attempt
from renderfarm.outbox import deliveries
from renderfarm.quickread import QuickReader
from renderfarm.wire import CancelIntent, Failed, JobSpec, SubmitIntent, Usage, WireError

SECRET = "s3cret-webhook-key"
SHA = "ab" * 32
SPEC = JobSpec(name="shot", owner="ana", renderer="null", scene_name="shot.toml", scene_key=f"scenes/{SHA}.toml",
               scene_sha256=SHA, frames="1", width=64, height=36)


class Receiver:
    """A webhook receiver on a free loopback port: records each POST (headers and raw body) and
    answers from a script of statuses ("hang" holds the request until `release()`), then 200."""

    def __init__(self, script: list = ()) -> None:
        self.script = list(script)
        self.received: list[tuple[dict, bytes, object]] = []  # headers, body, what was answered
        self.lock = threading.Lock()
        self.released = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with outer.lock:
                    answer = outer.script.pop(0) if outer.script else 200
                    outer.received.append((dict(self.headers), body, answer))
                if answer == "hang":
                    outer.released.wait(60)
                    return
                self.send_response(answer)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def events(self, answered=None) -> list[str]:
        with self.lock:
            return [h["X-Farm-Event-Id"] for h, _b, a in self.received if answered is None or a == answered]

    def release(self) -> None:
        self.released.set()

    def close(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def receiver():
    made: list[Receiver] = []

    def make(script=()) -> Receiver:
        made.append(Receiver(script))
        return made[-1]

    yield make
    for r in made:
        r.close()


def webhook_env(url: str, **more: str) -> dict[str, str]:
    return {"FARM_WEBHOOK_URL": url, "FARM_WEBHOOK_SECRET": SECRET, **more}


def submit(manager, request: str, **spec) -> str:
    intent = SubmitIntent(request_id=request * 32, job=SPEC.model_copy(update=spec))
    streams.send_intent(manager.r, intent)
    manager.tick()
    reply = streams.await_reply(manager.r, intent.request_id, 5)
    assert reply.ok, reply
    return reply.job_id


def cancel(manager, job_id: str, request: str = "c") -> None:
    streams.post(manager.r, CONTROL_STREAM, CancelIntent(request_id=request * 32, job=job_id))
    manager.tick()


def states(manager, job_id: str) -> list[tuple[str, str, str, int]]:
    with session_scope(manager.engine) as s:
        return [(d["event_id"], d["target"], d["state"], d["tries"]) for d in deliveries(s, job_id)]


def attempts(manager) -> list[int]:
    with session_scope(manager.engine) as s:
        return list(s.scalars(select(Attempt.id)))


def settle(manager, check, what: str):
    """Tick until the notifier has recorded what its senders finished."""
    return wait_for(lambda: (manager.tick(), check())[1], 10, what, interval=0.05)


def test_each_event_is_one_signed_post_per_url(redis_url: str, tmp_path: Path, receiver) -> None:
    farm, own = receiver(), receiver()
    clock = SteppedClock()
    manager = in_process_manager(redis_url, tmp_path, clock, webhook_env(farm.url, FARM_MAX_ATTEMPTS="1"))
    node = ActingNode(enroll_in_process(manager, "w"))
    node.beat(manager.r)
    job_id = submit(manager, "1", notify=own.url)
    settle(manager, lambda: attempts(manager), "the task handed to the node")
    # The task's only attempt fails: the task fails for good, and so does its job.
    node.post(manager.r, Failed(worker="w", attempt_id=1, error="boom", usage=Usage(wall=1.0)))
    manager.tick()
    clock.advance(notifier.LOOK_EVERY)
    settle(manager, lambda: all(s == "sent" for _e, _t, s, _n in states(manager, job_id)), "both sent")
    expected = [f"{job_id}:0.failed.1", f"{job_id}.failed"]
    assert sorted(farm.events()) == sorted(own.events()) == sorted(expected)
    for headers, body, _answer in farm.received + own.received:
        assert webhooks.verify(body, headers["X-Farm-Signature"], SECRET)
        assert not webhooks.verify(body + b" ", headers["X-Farm-Signature"], SECRET)
        doc = json.loads(body)
        assert doc["event_id"] == headers["X-Farm-Event-Id"] and doc["event"] == headers["X-Farm-Event"]
        assert doc["job"]["id"] == job_id and abs(int(headers["X-Farm-Timestamp"]) - clock.now()) <= 1
    task = next(json.loads(b) for h, b, _a in farm.received if h["X-Farm-Event"] == "task.failed")
    assert (task["task"]["index"], task["task"]["error"], task["job"]["state"]) == (0, "boom", "running")
    # Nothing more is ever sent for them.
    clock.advance(3600)
    for _ in range(3):
        manager.tick()
    assert len(farm.received) == len(own.received) == 2
    # `farm status JOB --json` shows where each stands.
    reader = QuickReader.open(manager.settings)
    shown = reader.job_status(job_id).to_json()["notifications"]
    reader.close()
    assert {(n["event_id"], n["target"], n["state"], n["url"]) for n in shown} == {
        (e, t, "sent", u) for e in expected for t, u in (("farm", farm.url), ("job", own.url))}
    manager.notifier.close()
    manager.engine.dispose()


def test_two_500s_then_a_200_deliver_the_event_exactly_once(redis_url: str, tmp_path: Path, receiver) -> None:
    farm = receiver([500, 500, 200])
    clock = SteppedClock()
    manager = in_process_manager(redis_url, tmp_path, clock, webhook_env(farm.url))
    job_id = submit(manager, "1")
    cancel(manager, job_id)
    event = f"{job_id}.cancelled"
    for tries, delay in ((1, 0.0), (2, webhooks.retry_delay(1)), (3, webhooks.retry_delay(2))):
        clock.advance(max(delay, notifier.LOOK_EVERY))
        settle(manager, lambda n=tries: states(manager, job_id)[0][3] == n, f"try {tries} recorded")
    assert states(manager, job_id) == [(event, "farm", "sent", 3)]
    assert farm.events() == [event] * 3 and farm.events(answered=200) == [event]
    clock.advance(3600)
    for _ in range(3):
        manager.tick()
    assert farm.events(answered=200) == [event] and len(farm.received) == 3
    manager.notifier.close()
    manager.engine.dispose()


def test_a_hanging_webhook_never_slows_a_tick_and_doctor_shows_the_failure(redis_url: str, tmp_path: Path,
                                                                            receiver) -> None:
    timeout = 3.0
    farm = receiver(["hang"] * 10)
    clock = SteppedClock()
    manager = in_process_manager(redis_url, tmp_path, clock,
                                 webhook_env(farm.url, FARM_WEBHOOK_TIMEOUT=str(timeout), FARM_WEBHOOK_TRIES="2"))
    job_id = submit(manager, "1")
    cancel(manager, job_id)
    clock.advance(notifier.LOOK_EVERY)
    manager.tick()
    wait_for(lambda: farm.received, 5, "the POST to arrive")
    assert manager.notifier.in_flight == 1
    # While the POST hangs, ticks take what they always take (a POST in the loop would hold
    # one for the whole timeout).
    slowest = 0.0
    started = time.monotonic()
    while manager.notifier.in_flight and time.monotonic() - started < timeout * 3:
        before = time.monotonic()
        manager.tick()
        slowest = max(slowest, time.monotonic() - before)
        time.sleep(0.02)
    print(f"slowest tick while a webhook hung: {slowest * 1000:.1f} ms")
    assert slowest < timeout / 3
    assert states(manager, job_id) == [(f"{job_id}.cancelled", "farm", "pending", 1)]
    # The second (last) try hangs too: given up, and `farm doctor` shows it.
    clock.advance(webhooks.retry_delay(1))
    settle(manager, lambda: states(manager, job_id)[0][2] == "failed", "the last try to fail")
    [check] = check_webhooks(manager.settings)
    assert check.status == CheckStatus.WARN
    assert f"{job_id}.cancelled" in check.detail and "timed out" in check.detail and "given up" in check.detail
    assert SECRET not in check.detail
    manager.notifier.close()
    manager.engine.dispose()


def test_an_event_recorded_but_not_sent_is_sent_once_by_the_next_manager(redis_url: str, tmp_path: Path,
                                                                         receiver) -> None:
    farm = receiver()
    clock = SteppedClock()
    env = webhook_env(farm.url)
    first = in_process_manager(redis_url, tmp_path, clock, env)
    job_id = submit(first, "1")
    cancel(first, job_id)  # committed with its notification; no look at the outbox since
    assert states(first, job_id) == [(f"{job_id}.cancelled", "farm", "pending", 0)]
    first.engine.dispose()  # the manager dies here
    second = in_process_manager(redis_url, tmp_path, clock, env)
    settle(second, lambda: states(second, job_id)[0][2] == "sent", "the event sent")
    second.notifier.close()
    second.engine.dispose()
    third = in_process_manager(redis_url, tmp_path, clock, env)
    clock.advance(3600)
    for _ in range(3):
        third.tick()
    assert farm.events() == [f"{job_id}.cancelled"]
    third.notifier.close()
    third.engine.dispose()


def test_without_a_farm_url_only_the_jobs_own_url_is_told(redis_url: str, tmp_path: Path, receiver) -> None:
    own = receiver()
    clock = SteppedClock()
    manager = in_process_manager(redis_url, tmp_path, clock)
    told, quiet = submit(manager, "1", notify=own.url), submit(manager, "2")
    cancel(manager, told, "c")
    cancel(manager, quiet, "d")
    clock.advance(notifier.LOOK_EVERY)
    settle(manager, lambda: states(manager, told)[1][2] == "sent", "the job's own URL told")
    assert [s[2] for s in states(manager, told)] == ["skipped", "sent"]
    assert [s[2] for s in states(manager, quiet)] == ["skipped"]
    assert own.events() == [f"{told}.cancelled"]
    manager.notifier.close()
    manager.engine.dispose()


@pytest.mark.parametrize("url", ["file:///etc/passwd", "gopher://127.0.0.1:6379/_FLUSHALL", "ftp://x/y",
                                 "http://", "/just/a/path", "http://a b/", "https://x/" + "a" * 3000])
def test_a_webhook_url_is_http_or_https_only(url: str, tmp_path: Path) -> None:
    with pytest.raises(WireError, match=r"^submission: notify: .*"):
        JobSpec.parse(json.dumps({**json.loads(SPEC.to_json()), "notify": url}))
    with pytest.raises(InputError, match="notify: "):
        webhooks.check_webhook_url(url)
    with pytest.raises(ConfigError, match=r"^webhook_url \(from env FARM_WEBHOOK_URL\): "):
        load_settings({"FARM_STATE_DIR": str(tmp_path), "FARM_WEBHOOK_URL": url}, cwd=tmp_path)


def test_farm_config_masks_the_webhook_secret(tmp_path: Path) -> None:
    settings = load_settings({"FARM_STATE_DIR": str(tmp_path), "FARM_WEBHOOK_URL": "https://hooks.example/x",
                              "FARM_WEBHOOK_SECRET": SECRET}, cwd=tmp_path)
    rows = {name: value for name, value, _source in effective_settings(settings)}
    assert rows["webhook_secret"] == "***" and rows["webhook_url"] == "https://hooks.example/x"
    assert SECRET not in json.dumps(rows)
