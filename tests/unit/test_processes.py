"""Process trees: a stop leaves nothing running, orphans included (shared/processes.py)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# Runs in its own process: it becomes a subreaper, which must not leak into the test session.
SCRIPT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from fedtl.shared import processes as p

    tmp = Path(sys.argv[1])
    p.become_subreaper()

    def make_orphan(tag):
        # a parent starts a grandchild deaf to SIGTERM and exits: what a dying SuperNode does to its SuperExec
        pid_file = tmp / f"{tag}.pid"
        parent = p.start(["sh", "-c", f"(trap '' TERM; exec sleep 120) & echo $! > {pid_file}.tmp; "
                          f"mv {pid_file}.tmp {pid_file}; exit 0"], tmp / "log")
        parent.wait(timeout=30)
        p._running.pop(parent.pid)
        deadline = time.monotonic() + 30
        while not pid_file.exists():
            assert time.monotonic() < deadline, "the grandchild did not start"
            time.sleep(0.05)
        orphan = int(pid_file.read_text())
        while orphan not in p.orphans():
            assert time.monotonic() < deadline, f"{orphan} not re-parented here: {p.orphans()}"
            time.sleep(0.05)
        return orphan

    sibling = p.start(["sleep", "120"], tmp / "log")  # our own child, not an orphan
    orphan = make_orphan("a")
    assert sibling.pid not in p.orphans()
    assert p.stop_orphans(timeout=0.5) == 1
    assert not p.alive(orphan), "the orphan outlived stop_orphans"
    assert sibling.poll() is None, "stop_orphans stopped a child it did not orphan"

    orphan = make_orphan("b")
    p.stop_many([sibling], timeout=0.5, orphans_too=True)
    assert not p.alive(orphan) and sibling.poll() is not None, "stop_many(orphans_too=True) left one"
    print("ok")
""")


def test_stop_orphans_kills_what_a_dead_child_left_behind_and_nothing_else(tmp_path):
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stdout + done.stderr

