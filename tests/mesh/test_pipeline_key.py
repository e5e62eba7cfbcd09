"""The stream affinity key (x-visionrpc-pipeline-key) of the Python SDK against the shared cases, which the
Go, Node and C# clients check too (tests/mesh/pipeline_key_cases.json): same request, same key, everywhere."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from visionrpc.client import pipeline_key
from visionrpc.client._pipeline_key import canonical_pipeline_text
from visionrpc.v1 import inference_pb2

CASES: list[dict[str, Any]] = json.loads((Path(__file__).parent / "pipeline_key_cases.json").read_text())[
    "cases"
]


def _request(case: dict[str, Any]) -> inference_pb2.StreamPredictionsRequest:
    return json_format.ParseDict(case["request"], inference_pb2.StreamPredictionsRequest())


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_case(case: dict[str, Any]) -> None:
    request = _request(case)
    assert pipeline_key(request) == case["key"]
    if case["canonical"] is not None:
        assert canonical_pipeline_text(request) == case["canonical"]


@pytest.mark.parametrize(
    ("first", "second", "same"),
    [
        ("class ids in any order, repeated", "class ids sorted", True),
        ("one file, every default", "max_fps 0, explicit NONE image, every-frame delivery and a resume: "
         "as the first case", True),
        ("every kind of source, in order", "sources in the other order", False),
        ("a path cannot fake a second source", "two sources", False),
    ],
)  # fmt: skip
def test_what_shares_a_key(first: str, second: str, same: bool) -> None:
    by_name = {case["name"]: case for case in CASES}
    assert (pipeline_key(_request(by_name[first])) == pipeline_key(_request(by_name[second]))) is same
