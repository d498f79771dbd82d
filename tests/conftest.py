import sys
from pathlib import Path

# benchmarks/torch_gpt.py is the PyTorch twin of our GPT: tests import it as `torch_gpt`.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
