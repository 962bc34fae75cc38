"""Shared fixtures of the refine_llm tests: a toy dataset on disk and loopback servers."""
from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HEADER = "user_id:token,item_id:token,rating:float\n"

# item id -> (title, genre tokens); two items share a title on purpose (title matching)
TOY_ITEMS = {
    "1": ("Alpha", "Action"), "2": ("Bravo", "Comedy"), "3": ("Charlie", "Drama"),
    "4": ("Delta", "Action Comedy"), "5": ("Echo", "Horror"), "6": ("Foxtrot", "Drama"),
    "7": ("Golf", "Comedy"), "8": ("Hotel", "Action"), "9": ("India", "Romance"),
    "10": ("Juliet", "Romance"), "11": ("Kilo", "Horror"), "12": ("Alpha", "Documentary"),
}

# (user, item, rating): user 1 mean >= 3, user 2 mean < 3, user 10 sorts after 2
TOY_ROWS = [
    ("1", "1", 5), ("1", "2", 4), ("1", "3", 3), ("1", "4", 3), ("1", "5", 2), ("1", "6", 1),
    ("1", "7", 3), ("1", "8", 3), ("1", "9", 3), ("1", "10", 3), ("1", "12", 3), ("1", "11", 4),
    ("2", "1", 1), ("2", "2", 2), ("2", "3", 2), ("2", "4", 3), ("2", "5", 4), ("2", "6", 1),
    ("10", "1", 4), ("10", "7", 2), ("10", "8", 3), ("10", "9", 5), ("10", "2", 3),
]


def write_toy(root: Path, dataset: str = "ML-100K") -> Path:
    """<root>/<dataset>/ with train_original and the RecBole .item file; returns root."""
    folder = root / dataset
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{dataset}_train_original.csv").write_text(
        HEADER + "".join(f"{u},{i},{r}\n" for u, i, r in TOY_ROWS))
    (folder / "ml-100k.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        + "".join(f"{i}\t{t}\t1995\t{g}\n" for i, (t, g) in TOY_ITEMS.items()))
    return root


def candidates_of(prompt: str) -> list[str]:
    """Titles of the last candidate list of a prompt (the real task's chunk)."""
    last = prompt.rsplit("Candidate movies:\n[", 1)[1].split("]\n", 1)[0]
    return [re.sub(r" \(genre:[^()]*\)$", "", t) for t in re.findall(r"<([^<>]*)>", last)]


class LoopbackServer:
    """An OpenAI-compatible fake on 127.0.0.1 — also the fault injector.

    ``plan`` is a list of faults consumed one per completion request ("error" -> HTTP 500,
    "timeout" -> sleeps ``stall`` s, "malformed" -> a JSON body without choices,
    "garbage" -> a non-JSON body, "hang" -> blocks until ``release`` is set, "slow" ->
    answers after ``stall`` s); when it is empty the server answers with the first candidate
    title of the prompt. ``max_in_flight``: the most completions it was answering at once.
    """

    def __init__(self, plan=None, stall=2.0):
        self.plan, self.stall = list(plan or []), stall
        self.completions = 0
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        self.release = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            counted = False  # this request is in ``in_flight``

            def _done(self):
                """Leave ``in_flight`` before any byte of the answer goes out: a client that
                reads the answer and sends its next request must not be counted twice."""
                if self.counted:
                    with outer.lock:
                        outer.in_flight -= 1
                    self.counted = False

            def _send(self, code, body: bytes):
                self._done()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def do_GET(self):
                self._send(200, json.dumps({"data": [{"id": "fake"}]}).encode())

            def do_POST(self):
                payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if not self.path.endswith("completions"):
                    self._send(404, b'{"error": "no such endpoint"}')
                    return
                with outer.lock:
                    outer.completions += 1
                    outer.in_flight += 1
                    outer.max_in_flight = max(outer.max_in_flight, outer.in_flight)
                    fault = outer.plan.pop(0) if outer.plan else None
                    self.counted = True
                try:
                    self._answer(fault, payload)
                finally:
                    self._done()

            def _answer(self, fault, payload):
                if fault == "error":
                    self._send(500, b'{"error": "injected"}')
                elif fault == "malformed":
                    self._send(200, b'{"id": "x", "object": "text_completion"}')
                elif fault == "garbage":
                    self._send(200, b"<html>not json")
                else:
                    if fault in ("timeout", "slow"):
                        time.sleep(outer.stall)
                    elif fault == "hang":
                        outer.release.wait(60)
                    prompt = payload.get("prompt") or payload["messages"][-1]["content"]
                    text = f" [<{candidates_of(prompt)[0]}>]\n{'#' * 3}\n"
                    choice = ({"message": {"role": "assistant", "content": text}}
                              if "messages" in payload else {"text": text})
                    self._send(200, json.dumps({"choices": [choice]}).encode())

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
