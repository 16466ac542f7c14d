"""Locust: OIP v2 REST infer requests. Run only as a subprocess (modelrail.rollout.load.locust):
locust monkey-patches the process with gevent, which breaks processes that use ssl/asyncio.

Environment: MODELRAIL_LOAD_MODEL, MODELRAIL_LOAD_VERSION (optional), MODELRAIL_LOAD_WAIT
(optional, seconds between one user's requests; default 0),
MODELRAIL_LOAD_ROWS (JSON file: a list of feature rows to send, one row per request).
"""

from __future__ import annotations

import json
import os
import random

from locust import HttpUser, constant, task

MODEL = os.environ["MODELRAIL_LOAD_MODEL"]
VERSION = os.environ.get("MODELRAIL_LOAD_VERSION", "")
WAIT = float(os.environ.get("MODELRAIL_LOAD_WAIT", "0"))  # seconds between a user's requests
with open(os.environ["MODELRAIL_LOAD_ROWS"]) as fh:
    ROWS = json.load(fh)
PATH = f"/v2/models/{MODEL}" + (f"/versions/{VERSION}" if VERSION else "") + "/infer"
BODIES = [json.dumps({"inputs": [{"name": "input", "datatype": "FP64",
                                  "shape": [1, len(r)], "data": r}]}) for r in ROWS]


class OIPRestUser(HttpUser):
    wait_time = constant(WAIT)

    @task
    def infer(self) -> None:
        self.client.post(PATH, data=random.choice(BODIES),
                         headers={"Content-Type": "application/json"}, name="infer")
