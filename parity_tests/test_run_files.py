"""``make test``'s watchdog (run_files.py): a file whose processes sit idle is hung, says where,
and is killed; a busy one is left to finish."""

import subprocess
import sys

import run_files

from harness.child_process import child_env
from harness.stacks import STACKS

IDLE = "from harness.stacks import dump_on_request; dump_on_request(); import time; time.sleep(60)"
BUSY = "import time\nstart = time.time()\nwhile time.time() - start < 4: pass"


def started(code: str, stacks) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], env=child_env(**{STACKS: str(stacks)}))


def test_an_idle_file_is_hung_says_where_and_is_killed(tmp_path, monkeypatch):
    monkeypatch.setattr(run_files, "HUNG_S", 2)
    monkeypatch.setattr(run_files, "POLL_S", 0.5)
    process = started(IDLE, tmp_path)
    assert run_files.watch(process, tmp_path, limit=600) is None
    assert process.returncode is not None  # killed, not left behind
    report = run_files.hung_report(tmp_path / "test_x.py", tmp_path)
    assert "HUNG" in report and "time.sleep(60)" in report  # its command line
    assert "<string>" in report  # its Python stack: faulthandler names the -c code so


def test_a_busy_file_is_left_to_finish(tmp_path, monkeypatch):
    monkeypatch.setattr(run_files, "HUNG_S", 2)
    monkeypatch.setattr(run_files, "POLL_S", 0.5)
    assert run_files.watch(started(BUSY, tmp_path), tmp_path, limit=600) == 0


def test_a_file_past_its_limit_is_hung_even_when_busy(tmp_path, monkeypatch):
    monkeypatch.setattr(run_files, "POLL_S", 0.5)
    assert run_files.watch(started(BUSY, tmp_path), tmp_path, limit=1) is None


def test_the_limit_is_twice_a_files_cold_time_and_20_minutes_at_least():
    assert run_files.limit_s(run_files.Path("test_repro.py")) == 2 * 56.8 * 60
    assert run_files.limit_s(run_files.Path("test_wer.py")) == 20 * 60
