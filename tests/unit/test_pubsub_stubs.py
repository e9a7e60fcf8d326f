"""The committed Pub/Sub API stubs are what `make proto` generates from the committed .proto:
an edit of either alone fails here."""

from __future__ import annotations

from pathlib import Path

import pytest
from grpc_tools import protoc

SERVICES = Path(__file__).resolve().parents[2] / "services"
PACKAGE = Path("revsync/connectors/pubsub_api")
STUBS = ("pubsub_api_pb2.py", "pubsub_api_pb2_grpc.py")


@pytest.mark.parametrize("stub", STUBS)
def test_the_committed_stub_is_generated_from_the_committed_proto(
    stub: str, tmp_path: Path
) -> None:
    status = protoc.main(
        [
            "protoc",
            f"-I{SERVICES}",
            f"--python_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            str(SERVICES / PACKAGE / "pubsub_api.proto"),
        ]
    )
    assert status == 0
    generated = (tmp_path / PACKAGE / stub).read_text()
    assert generated == (SERVICES / PACKAGE / stub).read_text(), f"run make proto: {stub}"
