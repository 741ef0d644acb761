"""The README's first command, run verbatim in a fresh directory, serves a search hit and stops cleanly."""

from __future__ import annotations

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


def test_readme_opens_with_the_two_commands() -> None:
    first, second = readme_commands()[:2]
    assert "fluxstream dev --demo" in first
    assert second.endswith("&& pytest")
    assert second in (REPO / ".ci" / "run").read_text()


@pytest.mark.slow
def test_readme_first_command_serves_a_hit(tmp_path: Path) -> None:
    command = readme_commands()[0]
    checkout = tmp_path / "fluxstream"
    copy_checkout(checkout)
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("FLUXSTREAM_") and k not in {"VIRTUAL_ENV", "PYTHONPATH"}}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if ".venv" not in p)
    env["FLUXSTREAM_HTTP_PORT"] = str(port)
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
                          json={"query": "nearest neighbour vector search", "collection": "demo", "k": 3})
        assert resp.status_code == 200
        assert resp.json()["hits"][0]["doc_id"] in {"vec-db", "hnsw"}
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    output = (tmp_path / "out.log").read_text()
    assert "fluxstream: stopped." in output
    kafka = re.search(r"kafka\s+(\S+)", output)
    assert kafka, output[-3000:]
    time.sleep(1)
    assert leftover_processes(str(checkout), kafka.group(1)) == []


def leftover_processes(checkout: str, kafka_address: str) -> list[dict[str, object]]:
    """Anything still running from the demo: by working directory, state path or broker address."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "cwd"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if checkout in cmdline or kafka_address in cmdline or (proc.info["cwd"] or "").startswith(checkout):
            found.append(proc.info)
    return found
