"""The real server as a subprocess on loopback, for the server tests (and a tiny model to serve)."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import smallmind
from smallmind.formats.checkpoint import save_checkpoint
from smallmind.formats.tokenizer import train_tokenizer
from smallmind.models.gpt import init_params, preset

TEXT = "naïve café: 日本語のテキスト, emoji 🙂🚀 and plain words.\n" * 20
START_TIMEOUT = 60.0   # seconds: a bound on a server that never comes up, not a timing


def tiny_checkpoint(path: Path, context_length: int = 64) -> Path:
    tokenizer = train_tokenizer("bpe", TEXT, 300)
    cfg = preset("tiny", vocab_size=tokenizer.vocab_size, context_length=context_length)
    save_checkpoint(path, config=cfg, params=init_params(cfg, seed=11), tokenizer=tokenizer)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`smallmind serve` with `args`, up and answering /health, until stop()."""

    def __init__(self, args: list[str], log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, PYTHONPATH=str(Path(smallmind.__file__).resolve().parents[1]))
        self.log = open(log, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "smallmind", "serve", *args, "--port", str(self.port)],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}: {log.read_text()}")
            try:
                if self.get("/health")[0] == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the server did not come up: {log.read_text()}")
            time.sleep(0.1)

    def request(self, method: str, path: str, body: bytes | None = None, headers=None) -> tuple[int, bytes]:
        req = urllib.request.Request(self.url + path, data=body, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def get(self, path: str, headers=None) -> tuple[int, bytes]:
        return self.request("GET", path, None, headers)

    def post(self, path: str, payload, headers=None) -> tuple[int, dict]:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        status, data = self.request("POST", path, body, headers)
        return status, json.loads(data)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
