"""Job state transitions and leases (app.jobs.lifecycle) on a real SQLite database."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from app.jobs import lifecycle
from app.jobs.ledger import DbLedger
from app.jobs.lifecycle import LeaseLost, Status
from app.storage.db import Database
from app.storage.migrate import upgrade
from app.storage.models import Job, Tenant, utcnow
from tests.helpers import seed_job


@pytest.fixture
def db(tmp_path):
    url = f"sqlite:///{tmp_path / 'l.db'}"
    upgrade(url)
    db = Database(url)
    with db.session() as s:
        s.add(Tenant(id="tn_a", name="a"))
    seed_job(db, "a", id="job_a", provider="torch", query_cap=1000)
    yield db
    db.dispose()


def silence(db: Database, seconds: float) -> None:
    """Make the job's lease look ``seconds`` old."""
    with db.session() as s:
        s.execute(update(Job).values(heartbeat_at=utcnow() - timedelta(seconds=seconds)))


def get(db: Database) -> Job:
    with db.session() as s:
        return s.get(Job, "job_a")


def test_one_lease_at_a_time_and_a_silent_one_is_taken_over(db):
    assert lifecycle.claim(db, "job_a", "one") is not None
    assert lifecycle.claim(db, "job_a", "two") is None  # alive: not ours
    silence(db, lifecycle.LEASE_TIMEOUT.total_seconds() + 1)
    assert lifecycle.claim(db, "job_a", "two") is not None
    with pytest.raises(LeaseLost):
        lifecycle.record_progress(
            db, "job_a", "one", iteration=1, iterations=2, state=b"", metrics_row=None, seq=0
        )
    assert get(db).attempts == 2


def test_taking_over_releases_the_dead_holders_reservations(db):
    lifecycle.claim(db, "job_a", "one")
    dead = DbLedger(db, "job_a", "tn_a", "torch", None, 0.0, lease="one")
    dead.reserve("training", 300)
    assert get(db).reserved_queries == 300
    silence(db, 60)
    assert lifecycle.requeue_stale(db) == ["job_a"]
    job = get(db)
    assert job.status == Status.QUEUED and job.reserved_queries == 0
    lifecycle.claim(db, "job_a", "two")
    live = DbLedger(db, "job_a", "tn_a", "torch", None, 0.0, lease="two")
    live.reserve("training", 1000)  # the whole budget is there again
    with pytest.raises(Exception, match="budget"):
        live.reserve("training", 1)


def test_a_late_settle_never_makes_reservations_negative(db):
    from adapters.dispatch import RequestRecord

    lifecycle.claim(db, "job_a", "one")
    ledger = DbLedger(db, "job_a", "tn_a", "torch", None, 0.0, lease="one")
    held = ledger.reserve("training", 50)
    silence(db, 60)
    lifecycle.claim(db, "job_a", "two")  # resets reservations to 0
    held.settle(RequestRecord("training", 50, 50, "ok", None, 0.0))
    job = get(db)
    assert job.reserved_queries == 0 and job.queries == 50  # what was answered still counts


def test_cancel_ends_a_job_in_any_non_final_state(db):
    lifecycle.claim(db, "job_a", "one")
    with db.session() as s:
        lifecycle.request_cancel(s, s.get(Job, "job_a"))
    assert get(db).status == Status.RUNNING  # alive: it stops at its next iteration
    silence(db, 60)
    with db.session() as s:
        lifecycle.request_cancel(s, s.get(Job, "job_a"))
    job = get(db)
    assert job.status == Status.CANCELLED and job.finished_at is not None


def test_a_stale_job_whose_cancel_was_asked_ends_cancelled_not_requeued(db):
    lifecycle.claim(db, "job_a", "one")
    with db.session() as s:
        s.execute(update(Job).values(cancel_requested=True))
    silence(db, 60)
    assert lifecycle.requeue_stale(db) == []
    assert get(db).status == Status.CANCELLED


def test_the_heartbeat_keeps_a_lease_alive(db, monkeypatch):
    monkeypatch.setattr(lifecycle, "HEARTBEAT", timedelta(seconds=0.05))
    lifecycle.claim(db, "job_a", "one")
    silence(db, 60)
    with lifecycle.Heartbeat(db, "job_a", "one"):
        import time

        time.sleep(0.3)
    assert lifecycle.requeue_stale(db) == []
    assert get(db).status == Status.RUNNING


def test_a_job_waiting_for_its_quota_is_queued_and_claimed_only_when_due(db):
    from app.services.jobs import view

    lifecycle.claim(db, "job_a", "one")
    until = lifecycle.wait_for_quota(
        db, "job_a", "one", seconds=60, max_waits=2, reason="hourly limit"
    )
    assert until is not None
    job = get(db)
    assert job.status == Status.QUEUED and job.lease is None and job.quota_waits == 1
    shown = view(job)["waiting"]
    assert shown["reason"] == "hourly limit" and shown["until"].endswith("+00:00")
    assert lifecycle.next_queued(db, set()) is None  # the embedded runner skips it
    assert lifecycle.claim(db, "job_a", "two") is None  # and so does a queue delivery
    assert lifecycle.due_waiting(db) == []
    with db.session() as s:  # the hour passes
        s.execute(update(Job).values(not_before=utcnow() - timedelta(seconds=1)))
    (due,) = lifecycle.due_waiting(db)
    lifecycle.woken(db, *due)
    assert get(db).not_before is None and lifecycle.due_waiting(db) == []
    assert lifecycle.next_queued(db, set()) == "job_a"
    assert lifecycle.claim(db, "job_a", "two") is not None
    job = get(db)
    assert job.status == Status.RUNNING and job.waiting is None and view(job)["waiting"] is None


def test_quota_waits_are_counted_until_the_job_progresses(db):
    def wait(lease: str) -> object:
        return lifecycle.wait_for_quota(db, "job_a", lease, seconds=0, max_waits=2, reason="r")

    lifecycle.claim(db, "job_a", "one")
    assert wait("one") is not None
    lifecycle.claim(db, "job_a", "two")
    assert wait("two") is not None
    lifecycle.claim(db, "job_a", "three")
    assert wait("three") is None  # a third wait in a row: the caller fails the job
    assert get(db).status == Status.RUNNING
    lifecycle.record_progress(
        db, "job_a", "three", iteration=1, iterations=2, state=b"", metrics_row=None, seq=0
    )
    assert get(db).quota_waits == 0  # progress: the quota came back
    assert wait("three") is not None
    with db.session() as s:  # a waiting job is cancelled at once, and no longer waits
        lifecycle.request_cancel(s, s.get(Job, "job_a"))
    job = get(db)
    assert job.status == Status.CANCELLED and job.not_before is None and job.waiting is None


def test_paid_answers_live_under_the_lease_until_the_next_checkpoint_or_the_end(db):
    def save(lease: str, pack: bytes) -> bool:
        return lifecycle.save_answers(db, "job_a", lease, pack)

    def progress(lease: str) -> None:
        lifecycle.record_progress(
            db,
            "job_a",
            lease,
            iteration=1,
            iterations=2,
            state=b"",
            metrics_row=None,
            seq=0,
        )

    assert not save("one", b"unclaimed")  # nobody holds the job: nothing kept
    lifecycle.claim(db, "job_a", "one")
    assert save("one", b"first") and save("one", b"second")
    assert lifecycle.paid_answers(db, "job_a") == [b"first", b"second"]  # in their order
    # the execution dies; the next takes the job over and finds them
    with db.session() as s:
        s.execute(update(Job).values(heartbeat_at=utcnow() - timedelta(minutes=5)))
    assert lifecycle.claim(db, "job_a", "two") is not None
    assert not save("one", b"stale")  # a lost lease writes nothing
    assert lifecycle.paid_answers(db, "job_a") == [b"first", b"second"]
    assert save("two", b"third")
    # a wait for the quota keeps them for the next execution
    assert lifecycle.wait_for_quota(db, "job_a", "two", seconds=0, max_waits=5, reason="r")
    assert not save("two", b"while queued")
    assert lifecycle.paid_answers(db, "job_a") == [b"first", b"second", b"third"]
    lifecycle.claim(db, "job_a", "three")
    progress("three")  # the checkpoint holds what they taught
    assert lifecycle.paid_answers(db, "job_a") == []
    assert save("three", b"fourth")
    assert lifecycle.finish(db, "job_a", "three", Status.FAILED, error="e")
    assert lifecycle.paid_answers(db, "job_a") == []  # the job is over


def test_a_job_cancelled_while_it_waits_drops_what_it_paid_for(db):
    lifecycle.claim(db, "job_a", "one")
    assert lifecycle.save_answers(db, "job_a", "one", b"paid")
    lifecycle.wait_for_quota(db, "job_a", "one", seconds=600, max_waits=5, reason="r")
    with db.session() as s:
        lifecycle.request_cancel(s, s.get(Job, "job_a"))
    assert get(db).status == Status.CANCELLED
    assert lifecycle.paid_answers(db, "job_a") == []
