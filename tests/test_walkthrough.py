"""README "Your own data": its command lines run as written, on a small generated log; once
more exactly as pasted into a shell (slow: the commands start one process each)."""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import stat
import subprocess
import sys

import pandas as pd
import pytest

from tf_gru4rec.cli import main
from tf_gru4rec.data.synthetic import SyntheticConfig, generate_sessions

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--set", "layers=8", "--set", "n_sample=16", "--set", "n_epochs=1", "--set",
        "batch_size=8", "--verbose", "0"]


def readme_block() -> str:
    """The first code block of the README's "Your own data" section, as written."""
    with open(os.path.join(REPO, "README.md")) as f:
        text = f.read()
    section = text.split("## Your own data", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```bash\n(.*?)```", section, re.S).group(1)


def readme_commands() -> list[list[str]]:
    """The `tf-gru4rec` lines of the README's "Your own data" code block, split as a shell
    would (continuation lines joined)."""
    block = readme_block().replace("\\\n", " ")
    return [shlex.split(line) for line in block.splitlines() if line.startswith("tf-gru4rec")]


def table_metrics(out: str) -> dict:
    """The one-row table of `evaluate` / `replay` as {"recall@20": ..., "test_events": ...}."""
    header, row = out.strip().splitlines()[-2:]
    names = [n.lower() for n in header.replace("test events", "test_events").split()]
    return dict(zip(names, map(float, row.split()[-len(names):]), strict=True))


def _raw_log(path):
    events = generate_sessions(SyntheticConfig(n_items=80, n_sessions=1200, days=6, seed=1))
    raw = pd.DataFrame({
        "session_id": events["SessionId"], "product": events["ItemId"],
        "timestamp": pd.to_datetime(events["Time"], unit="s", utc=True).map(
            lambda t: t.isoformat())})
    raw.sample(frac=1.0, random_state=0).to_csv(path, sep=";", index=False)  # any row order


def test_the_readme_walkthrough_runs(tmp_path, monkeypatch, capsys):
    from tf_gru4rec.serving.dev_server import DevServer

    commands = readme_commands()
    assert [c[1] for c in commands] == ["prepare", "train", "evaluate", "export", "serve",
                                        "replay"]
    monkeypatch.chdir(tmp_path)
    _raw_log(tmp_path / "clicks.csv")
    server, results = None, {}
    try:
        for argv in commands:
            argv = argv[1:]
            if argv[-1] == "&":  # serve: the development server in-process, on a free port
                options = dict(zip(argv[1:-1:2], argv[2:-1:2], strict=True))
                server = DevServer(options["--base"], port=0).start()
                continue
            if argv[0] == "train":
                argv += TINY
            if argv[0] == "replay":
                argv[argv.index("--target") + 1] = f"127.0.0.1:{server.port}"
            capsys.readouterr()
            assert main(["-v", "WARNING", *argv]) == 0, argv
            out = capsys.readouterr().out
            if argv[0] == "prepare":
                assert "train.tsv" in out and "valid.tsv" in out
            elif argv[0] in ("evaluate", "replay"):
                results[argv[0]] = table_metrics(out)
                assert results[argv[0]]["recall@20"] > 0.05
    finally:
        if server is not None:
            server.stop()
    # The served model ranks the test clicks as the trained one did.
    assert abs(results["replay"]["recall@20"] - results["evaluate"]["recall@20"]) < 1e-3
    report = json.loads((tmp_path / "prepared" / "prepare.json").read_text())
    assert report["outputs"]["valid"]["events"] > 0
    assert (tmp_path / "export" / "gru4rec" / "1").is_dir()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _table_row(out: str, name: str) -> dict:
    """The row `name` of the last metrics table in `out` that has one."""
    lines = out.splitlines()
    at = max(i for i, line in enumerate(lines) if line.startswith(name + " "))
    top = max(i for i in range(at) if lines[i].startswith(" "))  # the header: no row name
    header = lines[top].replace("test events", "test_events").lower().split()
    return dict(zip(header, lines[at][len(name):].split(), strict=True))


@pytest.mark.slow
def test_the_readme_walkthrough_runs_as_pasted_into_a_shell(tmp_path):
    """The block pasted into bash as it is: `serve ... &` then `replay` at once (replay
    waits for the server to load). Only the port is changed, to a free one, and a trap stops
    the server if the block fails before its own `kill`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "tf-gru4rec"  # the console script, run by this interpreter
    shim.write_text(f"""#!/bin/sh
exec "{sys.executable}" -c "import sys; from tf_gru4rec.cli import entry; \\
sys.argv[0] = 'tf-gru4rec'; entry()" "$@"
""")
    shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
    _raw_log(tmp_path / "clicks.csv")
    port = str(_free_port())
    script = "set -e\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n" + \
        readme_block().replace("8500", port)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=1800)  # a guard against a hang only
    assert done.returncode == 0, done.stderr[-3000:]
    evaluated = _table_row(done.stdout, "model")
    replayed = _table_row(done.stdout, f"served (127.0.0.1:{port})")
    assert replayed == evaluated and float(evaluated["recall@20"]) > 0.05
    assert "UNAVAILABLE" not in done.stderr
