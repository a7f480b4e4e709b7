"""``POST /v1/jobs/{id}/predict`` with a program whose read-out also reads each image's full
view (``views`` in program.npz): two frames per image go to the oracle, the answer and the
ledger count both, the 256-image limit still holds with 512 frames, and the classes are what
``ProgramFile`` gives on the originals. The program file is made by hand: no job runs."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from adapters.torch_local import TorchOracle
from app.jobs.artifacts import ProgramFile
from tests.helpers import api, bearer, give_program, png, post_job, upload

S, K = 32, 1000  # give_program's frame; the bundled model's labels


def test_a_program_with_the_full_view_costs_two_queries_per_image(settings, small_npz):
    with api(settings, run_jobs=False) as (client, db):
        h = bearer(db, "acme")
        ds = upload(client, h, small_npz)
        job = post_job(client, h, {"dataset_id": ds["id"], "oracle": {"kind": "torch"}})
        c = len(ds["classes"])
        rng = np.random.default_rng(0)
        give_program(
            db,
            settings.data_dir,
            job,
            ds["classes"],
            classifier=np.array("readout"),
            readout_weight=rng.standard_normal((c, 2 * K)).astype(np.float32),
            readout_bias=np.zeros(c, np.float32),
            readout_eps=np.array(1e-6),
            views=np.array(["full"]),
        )

        files = [png(20 + i, seed=i) for i in range(3)]
        r = client.post(
            f"/v1/jobs/{job}/predict",
            headers=h,
            files=[("files", (f"x{i}.png", f)) for i, f in enumerate(files)],
        )
        assert r.status_code == 200, r.text
        assert r.json()["queries"] == 2 * len(files)
        prog = ProgramFile.load(
            (settings.data_dir / "artifacts" / job / "program.npz").read_bytes()
        )
        oracle = TorchOracle(input_size=S)
        originals = [np.asarray(Image.open(io.BytesIO(f)).convert("RGB")) for f in files]
        want = prog.predict(originals, lambda x: oracle.predict(x).probs)
        assert [p["class"] for p in r.json()["predictions"]] == want

        # The most files a request may hold: 512 frames, split into requests by the dispatcher.
        r = client.post(
            f"/v1/jobs/{job}/predict",
            headers=h,
            files=[("files", (f"{i}.png", png(8, seed=i))) for i in range(256)],
        )
        assert r.status_code == 200, r.text
        assert r.json()["queries"] == 512 and len(r.json()["predictions"]) == 256
        spend = client.get("/v1/spend", headers=h).json()["by_job"][job]
        assert spend["queries"] == 2 * len(files) + 512  # the ledger paid for every frame
