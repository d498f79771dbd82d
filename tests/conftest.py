import sys
from pathlib import Path

# benchmarks/torch_gpt.py is the PyTorch twin of our GPT: tests import it as `torch_gpt`.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import pytest  # noqa: E402

CONTEXT = 512   # the served tiny model's context: room for a generation long enough to walk away from


@pytest.fixture(scope="session")
def tiny_server(tmp_path_factory):
    """The server on a tiny random checkpoint (no chat template), shared by the server tests."""
    from server_process import Server, tiny_checkpoint

    root = tmp_path_factory.mktemp("served")
    checkpoint = tiny_checkpoint(root / "model", context_length=CONTEXT)
    server = Server(["--model", str(checkpoint), "--parallel", "4", "--ctx", str(CONTEXT), "--threads", "1"],
                    root / "server.log")
    server.checkpoint = checkpoint
    yield server
    server.stop()
