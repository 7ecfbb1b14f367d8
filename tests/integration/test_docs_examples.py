"""Every ``bash`` and ``python`` example in the top-level *.md files and docs/*.md runs, verbatim, against a server.

The server is what ``scripts/serve`` gives: ``python -m service`` with the default checkpoint on
127.0.0.1:8000 (the port the examples call; the test fails at once if something else holds it).
Each fenced block runs from the repository root, in document order: ``bash`` blocks with
``bash -e -o pipefail``, ``python`` blocks with this interpreter (``python``/``python3`` on the
blocks' PATH are this interpreter too). ``curl`` in a block fails on an HTTP error status
(``--fail-with-body`` is added unless the example asks for ``-f`` itself), so an example that
answers 4xx fails here even when it writes ``curl -s``.

A block that cannot run in CI (docker, kubectl, a GPU, training for minutes or hours, the
set-up commands themselves) is preceded by an HTML comment saying why::

    <!-- not run: docker is not available in CI -->

and is listed, with its reason, by ``test_blocks_not_run_say_why``. New examples need no edit
here: every block of those languages in those files is collected.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.server import REPO, ServerProcess

DOCS = [*sorted(REPO.glob("*.md")), *sorted((REPO / "docs").glob("*.md"))]
LANGUAGES = {"bash": "bash", "sh": "bash", "shell": "bash", "python": "python", "py": "python", "python3": "python"}
PORT = 8000
BLOCK_TIMEOUT_S = 600  # a bound for a stuck example, not a speed target
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`\s]*)[^`]*$")
NOT_RUN = re.compile(r"<!--\s*not run\b\s*:?(?P<reason>.*?)-->", re.DOTALL)
MARKER_LINE = re.compile(r"^[ \t]*<!--\s*not run\b", re.MULTILINE)  # a comment on its own line, not one quoted in text
CURL_FAILS_ON_HTTP_ERRORS = """\
curl() {
  local a
  for a in "$@"; do
    case "$a" in
      --fail | --fail-with-body) command curl "$@"; return ;;
      --*) ;;
      -*f*) command curl "$@"; return ;;
    esac
  done
  command curl --fail-with-body "$@"
}
"""


@dataclass(frozen=True)
class Block:
    """One fenced code block of a markdown file.

    Attributes:
        path: the markdown file.
        line: 1-based line of the opening fence.
        language: ``bash`` or ``python`` (normalised), or the info string as written.
        code: the block's text, its fence's indentation removed.
        not_run: the reason given by a ``<!-- not run: ... -->`` comment just above, or None.
    """

    path: Path
    line: int
    language: str
    code: str
    not_run: str | None

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"

    @property
    def runnable(self) -> bool:
        return self.language in ("bash", "python")


def comment_above(lines: list[str], index: int) -> str | None:
    """The HTML comment ending on the last non-blank line before ``lines[index]``, if there is one."""
    i = index - 1
    while i >= 0 and not lines[i].strip():
        i -= 1
    if i < 0 or not lines[i].rstrip().endswith("-->"):
        return None
    end = i
    while i >= 0 and "<!--" not in lines[i]:
        i -= 1
    return "\n".join(lines[max(i, 0) : end + 1]) if i >= 0 else None


def parse_blocks(path: Path) -> list[Block]:
    """Every fenced block of ``path`` (blocks nested in lists too), in order."""
    lines = path.read_text().splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, info = m["indent"], m["fence"], m["info"].lower()
        close = re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
        j = i + 1
        while j < len(lines) and not close.match(lines[j]):
            j += 1
        body = [ln[len(indent) :] if ln.startswith(indent) else ln.lstrip() for ln in lines[i + 1 : j]]
        comment = comment_above(lines, i)
        marker = NOT_RUN.search(comment) if comment else None
        not_run = " ".join(marker["reason"].split()) if marker else None
        blocks.append(Block(path, i + 1, LANGUAGES.get(info, info), "\n".join(body) + "\n", not_run))
        i = j + 1
    return blocks


BLOCKS = [b for path in DOCS for b in parse_blocks(path)]
TO_RUN = [b for b in BLOCKS if b.runnable and b.not_run is None]


def test_the_parser_finds_every_fenced_example() -> None:
    """As many runnable blocks as opening fences tagged bash/python, and at least one to run."""
    for path in DOCS:
        text = path.read_text()
        tagged = len(re.findall(r"^[ \t]*(?:```|~~~)[ \t]*(?:bash|sh|shell|python|py|python3)[ \t]*$", text, re.M))
        found = [b for b in BLOCKS if b.path == path and b.runnable]
        assert len(found) == tagged, f"{path.name}: {len(found)} blocks parsed, {tagged} fences tagged"
    assert TO_RUN, "no example to run: is the parser broken?"


def test_blocks_not_run_say_why(capsys: pytest.CaptureFixture[str]) -> None:
    """Every ``not run`` comment gives a reason and sits right above a bash/python block."""
    skipped = [b for b in BLOCKS if b.not_run is not None]
    assert not [b.where for b in skipped if not b.not_run], "say why: <!-- not run: <reason> -->"
    assert not [b.where for b in skipped if not b.runnable], "a `not run` comment above a block that never runs"
    for path in DOCS:
        markers = len(MARKER_LINE.findall(path.read_text()))
        attached = sum(1 for b in skipped if b.path == path)
        assert markers == attached, f"{path.name}: a `not run` comment that is not right above a code block"
    with capsys.disabled():
        print(f"\n{len(TO_RUN)} doc examples run; {len(skipped)} not run:")
        for b in skipped:
            print(f"  {b.where} ({b.language}): {b.not_run}")


def port_in_use(family: socket.AddressFamily, host: str, port: int) -> bool:
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port in TIME_WAIT is free
        try:
            s.bind((host, port))
        except OSError as e:
            return e.errno == errno.EADDRINUSE  # no IPv6 here: nothing can listen on ::1 either
    return False


@pytest.fixture(scope="module")
def server(default_checkpoint: Path) -> Iterator[ServerProcess]:
    """``python -m service`` on 127.0.0.1:8000 with the repository ``checkpoints/``, as ``scripts/serve`` starts it."""
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        if port_in_use(family, host, PORT):
            pytest.fail(
                f"port {PORT} on {host} is taken: the examples call localhost:{PORT}, so this test serves there; "
                "stop whatever listens on it and rerun"
            )
    env = {"MFDV_API_KEY": ""}  # the examples run as right after scripts/serve: no key
    with ServerProcess(default_checkpoint.parent, env=env, port=PORT, repository=True) as s:
        yield s


@pytest.fixture(scope="module")
def block_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The examples' environment: no MFDV_* settings, and ``python``/``python3`` are this interpreter."""
    shims = tmp_path_factory.mktemp("bin")
    for name in ("python", "python3"):
        shim = shims / name
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
        shim.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MFDV_")}
    env["PATH"] = f"{shims}{os.pathsep}{env.get('PATH', '')}"
    return env


def command(language: str, code: str) -> list[str]:
    if language == "bash":
        return ["bash", "-e", "-o", "pipefail", "-c", CURL_FAILS_ON_HTTP_ERRORS + code]
    return [sys.executable, "-c", code]


def test_curl_in_an_example_fails_on_an_http_error(server: ServerProcess, block_env: dict[str, str]) -> None:
    def rc(code: str) -> int:
        return subprocess.run(
            command("bash", code), cwd=REPO, env=block_env, capture_output=True, timeout=60
        ).returncode

    assert rc("curl -s localhost:8000/healthz") == 0
    assert rc("curl -s localhost:8000/v1/predict -H 'Content-Type: application/json' -d '{\"inputs\": [[0.5]]}'") != 0
    assert rc("curl -fsS localhost:8000/no-such-path") != 0
    assert rc("curl -s localhost:8000/no-such-path | head -c 10") != 0  # pipefail
    assert rc(f"python -c 'import sys; sys.exit(sys.executable != \"{sys.executable}\")'") == 0  # the shim


@pytest.mark.parametrize("block", TO_RUN, ids=[b.where for b in TO_RUN])
def test_example_runs(block: Block, server: ServerProcess, block_env: dict[str, str]) -> None:
    cmd = command(block.language, block.code)
    try:
        run = subprocess.run(
            cmd, cwd=REPO, env=block_env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as e:
        partial = b"".join(v if isinstance(v, bytes) else (v or "").encode() for v in (e.stdout, e.stderr))
        pytest.fail(
            f"{block.where} did not finish within {BLOCK_TIMEOUT_S} s:\n{block.code}\n{partial.decode()[-4000:]}"
        )
    out = (run.stdout + run.stderr)[-4000:]
    assert run.returncode == 0, f"{block.where} exited with {run.returncode}:\n{block.code}\n--- output ---\n{out}"
