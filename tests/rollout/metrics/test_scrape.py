"""ScrapeProvider against a real server: deltas between scrapes per model version, server
errors only, p99 from the histogram, no data (never "all good") from an instance it cannot
scrape; plus the quantile arithmetic and counter resets on their own."""

from __future__ import annotations

import time

import httpx
import pytest

from modelrail.processes import stop
from modelrail.rollout.metrics.scrape import ScrapeProvider, _increase, quantile
from modelrail.rollout.ports import MetricTrack
from modelrail.serving.metrics import FLUSH_SECONDS
from tests.conftest import Example, start_server

BODY = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4],
                    "data": [5.1, 3.5, 1.4, 0.2]}]}


def test_quantile_interpolates_like_histogram_quantile() -> None:
    buckets = {0.001: 50.0, 0.002: 90.0, 0.005: 100.0, float("inf"): 100.0}
    assert quantile(0.5, buckets) == pytest.approx(0.001)
    assert quantile(0.99, buckets) == pytest.approx(0.002 + 0.003 * 0.9)
    assert quantile(0.99, {0.001: 0.0, float("inf"): 0.0}) is None


def test_the_split_and_the_header_route_are_counted_apart() -> None:
    from modelrail.rollout.metrics.scrape import parse

    text = "\n".join([
        'modelrail_requests_total{model="iris",version="2",protocol="rest",outcome="2xx",'
        'route="split"} 90',
        'modelrail_requests_total{model="iris",version="2",protocol="grpc",outcome="OK",'
        'route="header"} 7',
        'modelrail_requests_total{model="iris",version="2",protocol="rest",outcome="5xx",'
        'route="header"} 3',
        # a server from before the route label: all of it is the split's
        'modelrail_requests_total{model="iris",version="2",protocol="rest",outcome="2xx"} 5',
        ""])
    split, header = parse(text, "iris", "2"), parse(text, "iris", "2", "header")
    assert (split.requests, split.errors) == (95, 0)
    assert (header.requests, header.errors) == (10, 3)


def test_counter_reset_counts_from_zero() -> None:
    assert _increase(10, 4) == 6 and _increase(3, 40) == 3


@pytest.mark.slow
def test_scrape_provider_measures_a_real_server(examples: dict[str, Example],
                                                tmp_path: object) -> None:
    server = start_server(["iris:1", "iris:2"], tmp_path,  # type: ignore[arg-type]
                          extra_env={"MODELRAIL_FAULTS": '{"iris:2": {"error_rate": 0.25}}'})
    try:
        provider = ScrapeProvider()
        stable_track = MetricTrack("iris", "1", (server.http_url,))
        canary_track = MetricTrack("iris", "2", (server.http_url,))
        provider.sample(track=stable_track, window_seconds=1)
        provider.sample(track=canary_track, window_seconds=1)  # baselines
        with httpx.Client() as client:
            for _ in range(40):
                assert client.post(f"{server.http_url}/v2/models/iris/versions/1/infer",
                                   json=BODY).status_code == 200
            codes = [client.post(f"{server.http_url}/v2/models/iris/versions/2/infer",
                                 json=BODY).status_code for _ in range(200)]
            bad = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3],
                               "data": [1, 2, 3]}]}
            for _ in range(5):  # client errors are not the canary's fault
                assert client.post(f"{server.http_url}/v2/models/iris/versions/2/infer",
                                   json=bad).status_code == 400
        time.sleep(3 * FLUSH_SECONDS)
        stable = provider.sample(track=stable_track, window_seconds=1)
        canary = provider.sample(track=canary_track, window_seconds=1)
        assert stable is not None and canary is not None
        assert (stable.requests, stable.errors) == (40, 0)
        assert canary.requests == 205 and canary.errors == codes.count(500)
        assert 20 <= canary.errors <= 80  # about a quarter of 200
        assert stable.p99_ms is not None and 0 < stable.p99_ms < 1000
        again = provider.sample(track=stable_track, window_seconds=1)  # nothing new since
        assert again is not None and again.requests == 0 and again.p99_ms is None
    finally:
        stop(server.proc)
    # the server is gone: the provider says it cannot know, never "all good"
    assert provider.sample(track=stable_track, window_seconds=1) is None
    assert provider.sample(track=MetricTrack("iris", "1"), window_seconds=1) is None  # no urls


@pytest.mark.slow
def test_a_real_server_counts_the_header_route_apart_on_both_protocols(
        examples: dict[str, Example], tmp_path: object) -> None:
    """MODELRAIL_HEADER_ROUTE (the stack's headerRoute, set on the Deployment): REST and
    gRPC requests carrying it are the header's, the others the split's; a bad value is
    refused by name."""
    import numpy as np
    import tritonclient.grpc as tgrpc

    from modelrail.errors import InvalidInputError
    from modelrail.serving.config import parse_header_route

    for bad in ("x-cohort", "X-Cohort=a", "x-cohort=a b", "=a"):
        with pytest.raises(InvalidInputError, match="MODELRAIL_HEADER_ROUTE"):
            parse_header_route(bad)
    server = start_server(["iris:2"], tmp_path,  # type: ignore[arg-type]
                          extra_env={"MODELRAIL_HEADER_ROUTE": "x-model-cohort=canary"})
    try:
        provider = ScrapeProvider()
        split = MetricTrack("iris", "2", (server.http_url,))
        header = MetricTrack("iris", "2", (server.http_url,), route="header")
        provider.sample(track=split, window_seconds=1)
        provider.sample(track=header, window_seconds=1)  # baselines
        with httpx.Client() as client:
            for headers in ({}, {"x-model-cohort": "canary"}, {"x-model-cohort": "other"}):
                for _ in range(10):
                    assert client.post(f"{server.http_url}/v2/models/iris/infer", json=BODY,
                                       headers=headers).status_code == 200
        grpc = tgrpc.InferenceServerClient(server.grpc_target)
        for _ in range(4):
            inp = tgrpc.InferInput("input", [1, 4], "FP32")
            inp.set_data_from_numpy(np.array([BODY["inputs"][0]["data"]], dtype=np.float32))
            grpc.infer("iris", [inp], headers={"x-model-cohort": "canary"})
        grpc.close()
        time.sleep(3 * FLUSH_SECONDS)
        got_split = provider.sample(track=split, window_seconds=1)
        got_header = provider.sample(track=header, window_seconds=1)
        assert got_split is not None and got_header is not None
        assert got_split.requests == 20  # no header, and the wrong value
        assert got_header.requests == 14 and got_header.errors == 0  # 10 REST + 4 gRPC
    finally:
        stop(server.proc)


def test_stable_mirror_counters_are_read_as_increases_after_a_baseline(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """ScrapeProvider.shadow: the first call is the baseline (None: the counters since the
    server started are not an interval's), later calls the increase, summed over
    instances; only the sender's model version counts."""
    from modelrail.rollout.core.analysis import ShadowSample

    def text(answered: int, dropped: int, pairs: int, differ: int) -> str:
        return "\n".join([
            f'modelrail_shadow_requests_total{{model="iris",version="1",outcome="answered"}} '
            f'{answered}',
            f'modelrail_shadow_requests_total{{model="iris",version="1",outcome="dropped"}} '
            f'{dropped}',
            f'modelrail_shadow_pairs_total{{model="iris",version="1"}} {pairs}',
            f'modelrail_shadow_disagreements_total{{model="iris",version="1"}} {differ}',
            'modelrail_shadow_pairs_total{model="iris",version="9"} 1000'])

    scrapes = {"http://a": [text(10, 0, 40, 1), text(30, 2, 120, 3)],
               "http://b": [text(5, 0, 20, 0), text(6, 0, 24, 4)]}
    provider = ScrapeProvider()
    monkeypatch.setattr(provider, "_get", lambda url: scrapes[url].pop(0))
    track = MetricTrack("iris", "1", ("http://a", "http://b"))
    assert provider.shadow(track=track, window_seconds=10) is None
    assert provider.shadow(track=track, window_seconds=10) == ShadowSample(
        answered=21, dropped=2, pairs=84, disagreements=6)
