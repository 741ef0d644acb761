"""docs/cdc.md's walkthroughs, run as written: from an empty source PostgreSQL (a fresh embedded one with
wal_level=logical) to a searchable collection with `fluxstream cdc` next to `fluxstream dev`, then with
`fluxstream dev --cdc`.

The doc marks its shell blocks: ``<!-- doc-test: env -->`` (prefixed to every later block; the test puts its
source's URL into the ``FLUXSTREAM_CDC_SOURCE_URL=`` line), ``run`` (must exit 0), ``background "TEXT"``
(a long-running command in its own terminal: started, awaited until its output shows TEXT, stopped with
Ctrl-C/SIGINT at the end of its section, exit status 0), ``eventually "TEXT"`` (rerun until its output
shows TEXT). Only isolation differs from a user's shell: free ports for the query service and the cdc
metrics, no FLUXSTREAM_* of the test session.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from fluxstream.stack import free_port
from tests.debezium_harness import REPO, SourcePostgres

DOC = REPO / "docs" / "cdc.md"
MARKED = re.compile(r'<!-- doc-test: (\w+)(?: "([^"]*)")? -->\n```sh\n(.*?)```', re.S)


@dataclass(frozen=True)
class Block:
    section: str  # the ### heading it is under
    kind: str  # env, run, background, eventually
    expect: str
    script: str


def doc_blocks(text: str) -> list[Block]:
    blocks = []
    for found in MARKED.finditer(text):
        heading = re.findall(r"^### (.+)$", text[:found.start()], re.M)
        blocks.append(Block(heading[-1] if heading else "", found.group(1), found.group(2) or "", found.group(3)))
    return blocks


def test_the_doc_marks_both_walkthroughs() -> None:
    blocks = doc_blocks(DOC.read_text())
    sections = {b.section for b in blocks}
    assert sections == {"With `fluxstream cdc`", "With `fluxstream dev --cdc`"}, sections
    assert blocks[0].kind == "env"
    scripts = " ".join(b.script for b in blocks)
    assert "fluxstream cdc --tables public.articles" in scripts
    assert 'fluxstream dev --cdc "$FLUXSTREAM_CDC_SOURCE_URL"' in scripts
    assert all(b.expect for b in blocks if b.kind in {"background", "eventually"})


@pytest.mark.debezium
def test_cdc_walkthrough_runs_as_written(tmp_path: Path) -> None:
    source = SourcePostgres(tmp_path / "source-pg").start()
    workdir = tmp_path / "walkthrough"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUXSTREAM_")}
    env.update(PYTHONPATH=str(REPO), PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
               FLUXSTREAM_HTTP_PORT=str(free_port()), FLUXSTREAM_CDC_WEB_PORT=str(free_port()))
    prelude = ""
    running: list[tuple[subprocess.Popen[bytes], Path]] = []
    section = ""

    def stop_running() -> None:
        while running:
            proc, out = running.pop()
            proc.send_signal(signal.SIGINT)  # Ctrl-C in its terminal
            code = proc.wait(180)
            assert code == 0, f"{proc.args!r} exited with {code}: {out.read_text()[-3000:]}"

    def bash(script: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", "-c", f"set -eo pipefail\n{prelude}\n{script}"], cwd=workdir, env=env,
                              capture_output=True, text=True, timeout=timeout)

    try:
        for n, block in enumerate(doc_blocks(DOC.read_text())):
            if block.section != section:
                stop_running()
                section = block.section
            if block.kind == "env":
                assert "FLUXSTREAM_CDC_SOURCE_URL=" in block.script
                prelude += re.sub(r"(FLUXSTREAM_CDC_SOURCE_URL=)\S+", rf"\g<1>{source.url}", block.script)
            elif block.kind == "run":
                done = bash(block.script)
                assert done.returncode == 0, f"{block.script}\n{done.stdout}\n{done.stderr}"
            elif block.kind == "background":
                out = tmp_path / f"terminal-{n}.out"
                with out.open("wb") as log:  # its own session, like a terminal: SIGINT reaches only it
                    proc = subprocess.Popen(["bash", "-c", f"{prelude}\nexec {block.script.strip()}"], cwd=workdir,
                                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
                running.append((proc, out))
                deadline = time.monotonic() + 400
                while block.expect not in out.read_text(errors="replace"):
                    assert proc.poll() is None, f"{block.script} exited: {out.read_text()[-3000:]}"
                    assert time.monotonic() < deadline, f"{block.script}: no {block.expect!r} after 400 s"
                    time.sleep(0.5)
            elif block.kind == "eventually":
                deadline = time.monotonic() + 180
                while True:
                    done = bash(block.script)
                    if block.expect in done.stdout:
                        break
                    assert time.monotonic() < deadline, f"{block.script}: {done.stdout[-2000:]} {done.stderr[-2000:]}"
                    time.sleep(1)
            else:
                raise AssertionError(f"unknown doc-test kind {block.kind!r}")
        stop_running()
    finally:
        for proc, _ in running:
            proc.kill()
            proc.wait(30)
        source.stop()
