"""Issue 7's memory budget: a fresh process that loads the real Gemma 3 file, tokenizes, generates
16 tokens greedily and detokenizes peaks (VmHWM) within 1.25x the file's size plus its KV cache."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from model_files import gemma3_path

import smallmind
from smallmind.errors import SmallMindError

CTX = 256
# what a user's process does: load, tokenize, prefill, 16 greedy steps, detokenize; then report
# its peak resident memory and the bytes of the session's KV cache
SCRIPT = """
import json, sys
import numpy as np
import smallmind

model = smallmind.load(sys.argv[1])
session = model.session(int(sys.argv[2]))
logits = session.prefill(model.tokenize("The capital of France is", add_bos=True))
new = []
for _ in range(16):
    new.append(int(np.argmax(logits)))
    logits = session.step(new[-1])
text = model.detokenize(new)
with open("/proc/self/status") as f:
    peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
print(json.dumps({"peak": peak, "kv_bytes": session.kv.nbytes, "text": text}))
"""


def test_gemma3_generation_peaks_within_the_file_size_budget():
    if not Path("/proc/self/status").exists():
        pytest.skip("reads the peak from /proc (Linux)")
    try:
        path = gemma3_path()
    except SmallMindError:
        pytest.skip("the Gemma 3 model file is not installed")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(Path(smallmind.__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")])))
    run = subprocess.run([sys.executable, "-c", SCRIPT, str(path), str(CTX)], capture_output=True, text=True,
                         env=env, timeout=600, check=False)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.splitlines()[-1])
    assert result["text"].strip()
    budget = 1.25 * path.stat().st_size + result["kv_bytes"]
    assert result["peak"] <= budget, (f"peak resident memory {result['peak'] / 2**20:.1f} MiB exceeds "
                                      f"{budget / 2**20:.1f} MiB (1.25x the file plus the KV cache)")
