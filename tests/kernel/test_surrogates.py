"""Raw model text that UTF-8 cannot hold (lone surrogates, `"\\ud800"`) is kept losslessly, scored as usual, and
never crashes the kernel: from a scripted policy and from an `openai:` endpoint, on the first run and on resume."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from bloodwork.chaos.plan import ChaosProfile
from bloodwork.chronos.context_log import messages_at
from bloodwork.chronos.files import read_jsonl
from bloodwork.chronos.run import RunPaths, RunStatus, verify_run
from bloodwork.kernel import Kernel, KernelConfig
from bloodwork.oracles.registry import make_oracle
from bloodwork.tasks.folder import FolderTask
from tests.conftest import make_task

FRAME = '{"thought": "t", "q_next": "q", "op": {"name": "SYS_READ", "path": "a.txt"}}'
# per tick: a bare lone surrogate, one inside a frame (as the JSON escape a model writes), a valid frame
# followed by one, a key made of one, then plain frames
ANSWERS = ["\ud800", '{"thought": "\\ud800", "q_next": "x", "op": {"name": "SYS_READ", "path": "a.txt"}}',
           FRAME + "\udcff", '{"\udfff": 1}', FRAME, FRAME]
POLICY = '''
ANSWERS = {answers!r}

def policy(call, messages):
    if call.purpose == "probe":
        return "my goal \\udc80 is unclear"
    return ANSWERS[call.tick]
'''


def run_files_are_utf8(root: Path) -> None:
    for path in [root / ".journal.log", root / "trace.jsonl", root / "dirty_trace.jsonl",
                 *sorted((root / "context").iterdir())]:
        path.read_bytes().decode("utf-8")


def check_run(paths: RunPaths, answers: list[str]) -> list[dict[str, Any]]:
    assert not paths.crash_report.exists()
    run_files_are_utf8(paths.root)
    assert verify_run(paths).ok
    calls = [r for r in read_jsonl(paths.dirty) if r["purpose"] == "tick"]
    assert [r["text"] for r in calls] == answers  # lossless: the same strings come back
    assert [r["tick"] for r in calls] == list(range(len(answers)))
    return calls


def test_scripted_lone_surrogates_are_kept_scored_and_resumed(tmp_path: Path) -> None:
    script = tmp_path / "policy.py"
    script.write_text(POLICY.format(answers=ANSWERS))
    task = FolderTask(make_task(tmp_path, files={"a.txt": "alpha\n"}))
    config = KernelConfig(max_ticks=4, sandbox="none", probe_every=2)
    kernel = Kernel.create(task, make_oracle(f"scripted:{script}"), out_dir=tmp_path / "runs", config=config, seed=0,
                           chaos=ChaosProfile(), run_id="s")
    assert kernel.run().status == RunStatus.MAX_TICKS
    resumed = Kernel.resume(kernel.paths.root, task, make_oracle(f"scripted:{script}"), max_ticks=6)
    assert resumed.run().status == RunStatus.MAX_TICKS
    paths = resumed.paths

    calls = check_run(paths, ANSWERS)
    verdicts = [(r["strict_ok"], r["lenient_ok"], r["violation"]) for r in calls]
    assert verdicts[:4] == [(False, False, "not_json"), (False, False, "wrong_type"), (False, True, "prose_around"),
                            (False, False, "wrong_type")]
    assert verdicts[4:] == [(True, True, None)] * 2
    probes = [e.data.answer for e in read_events_of(paths, "probe")]
    assert probes == ["my goal \udc80 is unclear"] * 3
    # what the model is shown of its own past answers is valid text: the surrogate as its visible escape
    shown = "".join(m["content"] for m in messages_at(paths.context, 2))
    shown.encode("utf-8")
    assert "\\ud800" in shown


def read_events_of(paths: RunPaths, kind: str) -> list[Any]:
    from bloodwork.chronos.journal import read_events

    return [e for e in read_events(paths.journal) if e.kind == kind]


class SurrogateAPI(BaseHTTPRequestHandler):
    """An OpenAI-compatible endpoint whose answers hold lone surrogates (as `\\ud800` escapes in its JSON)."""

    protocol_version = "HTTP/1.1"
    bodies: list[dict[str, Any]] = []

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.bodies.append(body)
        text = ANSWERS[min(len(self.bodies) - 1, len(ANSWERS) - 1)]
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        for delta, finish in (({"role": "assistant", "content": text}, None), ({}, "stop")):
            chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": body["model"],
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")
        self.close_connection = True


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    SurrogateAPI.bodies = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), SurrogateAPI)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{server.server_address[1]}/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-loopback-test")
    yield SurrogateAPI.bodies
    server.shutdown()
    server.server_close()


def test_openai_answers_with_lone_surrogates_are_kept_and_sendable(tmp_path: Path, api: list[dict[str, Any]]) -> None:
    task = FolderTask(make_task(tmp_path, files={"a.txt": "alpha\n"}))
    options = {"max_retries": 0, "response_format": "none"}
    kernel = Kernel.create(task, make_oracle("openai:m", **options), out_dir=tmp_path / "runs",
                           config=KernelConfig(max_ticks=3, sandbox="none"), seed=0, chaos=ChaosProfile(), run_id="o")
    assert kernel.run().status == RunStatus.MAX_TICKS
    resumed = Kernel.resume(kernel.paths.root, task, make_oracle("openai:m", **options), max_ticks=5)
    assert resumed.run().status == RunStatus.MAX_TICKS

    calls = check_run(resumed.paths, ANSWERS[:5])
    assert all(r["error"] is None for r in calls), [r["error"] for r in calls]  # every later prompt could be sent
    assert len(api) == 5
    sent = json.dumps(api[1]["messages"])
    assert "\\\\ud800" in sent  # tick 1 showed tick 0's answer with the surrogate as its visible escape
