"""A worker killed in the middle of a step: the answers it had paid for since its last
checkpoint were saved as each request was settled (``paid_answers``), so the worker that
takes the job over starts with them and pays for none of them again (issue 9, item 5: the
same frame is never paid for twice in a job). Real workers on PostgreSQL + procrastinate,
a Custom Vision fake on a real socket (one image per request, so a step is many requests)."""

from __future__ import annotations

import re
import signal
import time

import pytest
from sqlalchemy import func, select

from app.storage.db import Database
from app.storage.models import PaidAnswers
from tests.fakes.customvision import FakeCustomVision
from tests.helpers import (
    add_credential,
    customvision_oracle,
    post_job,
    service,
    service_settings,
    start_workers,
    upload,
    wait_final,
)

KEY = "paid-answers-key-5c1d"
IN_FLIGHT = 8  # the Custom Vision adapter's requests at once (max_concurrency)
HELD = 2 * IN_FLIGHT + 4  # answers saved since the checkpoint when the worker is killed


def saved(db: Database, job_id: str) -> int:
    with db.session() as s:
        return s.scalar(
            select(func.count()).select_from(PaidAnswers).where(PaidAnswers.job_id == job_id)
        )


@pytest.mark.postgres
@pytest.mark.slow
def test_a_worker_killed_mid_step_leaves_its_answers_to_the_next_which_pays_only_once(
    pg_url, tmp_path, small_npz
):
    with FakeCustomVision(keys=[KEY], rate_limit=None, model="cheap") as fake:
        settings = service_settings(tmp_path, pg_url, oracle_allowed_endpoints=[fake.endpoint])
        with service(settings) as (client, h):
            body = {
                "dataset_id": upload(client, h, small_npz)["id"],
                # 30 requests a second: a step of about 50 images lasts more than a second
                "oracle": customvision_oracle(
                    fake,
                    credential_id=add_credential(client, h, KEY, "customvision"),
                    rate_limit=30,
                ),
                "program": {"input_size": 64, "target_size": 24},
                "optimizer": {"iterations": 6, "q": 3, "batch_size": 8, "eval_every": 3},
                "budget": {"max_queries": 5000},
                "seed": 4,
            }
            db = Database(pg_url)
            doomed = start_workers(settings, 1, tmp_path, prefix="doomed")[0]
            killed = post_job(client, h, body)
            deadline = time.monotonic() + 180
            while saved(db, killed) < HELD:
                assert time.monotonic() < deadline, "the job never held answers mid-step"
                time.sleep(0.01)
            doomed.send_signal(signal.SIGKILL)
            doomed.wait(10)
            held = saved(db, killed)
            survivor = start_workers(settings, 1, tmp_path, prefix="survivor")[0]
            try:
                resumed = wait_final(client, h, killed, timeout=300)
                straight = wait_final(client, h, post_job(client, h, body), timeout=300)
            finally:
                survivor.terminate()
                survivor.wait(20)
            left = saved(db, killed)
            db.dispose()
    assert resumed["status"] == straight["status"] == "succeeded", resumed["error"]
    assert held >= HELD and left == 0  # one pack per request; none left once the job ends
    log = (tmp_path / "survivor0.log").read_text()
    restored = re.search(rf"job {killed}: (\d+) answers paid for since its checkpoint", log)
    assert restored is not None and int(restored.group(1)) >= held, log[-2000:]
    # The same program for the same answers; paid for once, up to the requests that were
    # settled but not yet saved when the process died (one per request in flight at most).
    assert resumed["result"]["test_accuracy"] == straight["result"]["test_accuracy"]
    extra = resumed["spend"]["queries"] - straight["spend"]["queries"]
    assert 0 <= extra <= IN_FLIGHT, (resumed["spend"], straight["spend"])
