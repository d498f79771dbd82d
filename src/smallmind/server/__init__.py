"""The OpenAI-compatible HTTP server (a face over runtime/engine.py): `smallmind serve`.

Needs the `server` extra (FastAPI and uvicorn): pip install 'smallmind[server]'."""
