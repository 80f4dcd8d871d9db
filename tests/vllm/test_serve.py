"""`hf-adaptive-decoding serve`: vLLM's OpenAI-compatible server with an adapter, started on 127.0.0.1, asked through
/v1/chat/completions and /v1/completions, and stopped with nothing left running."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

pytest.importorskip("vllm")

from hf_adaptive_decoding.vllm.serve import vllm_serve_argv  # noqa: E402

TOKEN_ADAPTER = "smollm2-135m-arithmetic-token-budget"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def _descendants(pid: int) -> set[int]:
    found, frontier = set(), [pid]
    while frontier:
        parent = frontier.pop()
        children = subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True).stdout.split()
        for child in map(int, children):
            if child not in found:
                found.add(child)
                frontier.append(child)
    return found


def test_the_command_line_refuses_what_it_sets_itself_and_adapters_for_other_models(tmp_path):
    from hf_adaptive_decoding import AutoDecodingAdapter, IncompatibleBaseModelError
    from tests.conftest import make_tiny_model

    with pytest.raises(ValueError, match="--speculative-config"):
        vllm_serve_argv(TOKEN_ADAPTER, vllm_args=["--speculative-config={}"])
    AutoDecodingAdapter.for_model(make_tiny_model("llama"), "math-token").save_pretrained(tmp_path / "tiny")
    with pytest.raises(IncompatibleBaseModelError, match="hidden size 576"):
        vllm_serve_argv(tmp_path / "tiny")
    argv = vllm_serve_argv(TOKEN_ADAPTER, port=1234, vllm_args=["--max-model-len", "512"])
    overrides = json.loads(argv[argv.index("--hf-overrides") + 1])
    assert overrides["architectures"] == ["HfadAdaptiveLlamaForCausalLM"]
    assert argv[-2:] == ["--max-model-len", "512"] and argv[argv.index("--port") + 1] == "1234"


@pytest.mark.slow
def test_serve_answers_chat_and_completions_requests_and_stops_cleanly(tmp_path):
    port = _free_port()
    command = [sys.executable, "-m", "hf_adaptive_decoding.cli", "serve", "--adapter", TOKEN_ADAPTER]
    command += ["--port", str(port), "--dtype", "float32", "--max-model-len", "512", "--enforce-eager"]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    log = tmp_path / "server.log"
    with open(log, "w") as sink:  # a pipe nobody reads would fill up and stall the server
        server = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert server.poll() is None, log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                pass
            assert time.monotonic() < deadline, "not healthy within 300 s: " + log.read_text()[-3000:]
            time.sleep(2)
        with urllib.request.urlopen(f"{base}/v1/models", timeout=30) as response:
            model = json.loads(response.read())["data"][0]["id"]
        status, chat = _post(
            f"{base}/v1/chat/completions",
            {"model": model, "messages": [{"role": "user", "content": "What is 2 + 3?"}], "max_tokens": 24, "n": 2},
        )
        assert status == 200, chat
        assert len(chat["choices"]) == 2 and all(choice["message"]["content"] for choice in chat["choices"])
        assert chat["usage"]["completion_tokens"] <= 48
        status, completion = _post(f"{base}/v1/completions", {"model": model, "prompt": "1, 2, 3,", "max_tokens": 8})
        assert status == 200 and completion["choices"][0]["text"], completion
        assert completion["usage"]["completion_tokens"] <= 8  # the request's max_tokens is its token budget
        status, refused = _post(
            f"{base}/v1/completions", {"model": model, "prompt": "1, 2,", "max_tokens": 4, "temperature": 0.3}
        )
        assert status == 400 and "temperature=0.3" in json.dumps(refused), refused
    finally:
        children = _descendants(server.pid)
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    deadline = time.monotonic() + 30
    while any(os.path.exists(f"/proc/{pid}") for pid in children) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = [pid for pid in children if os.path.exists(f"/proc/{pid}")]
    assert not left, f"processes left behind: {left}"
