"""Every kind of file mtkit writes survives a kill -9 at the worst moments: the reader finds the old
version or the new one, never a mix, and nothing is left beside it.

Each writer of tests/writers.py first writes its "old" version here; then a child process writes
the "new" one and is killed with SIGKILL just before the rename that puts it in place, or in the
middle of writing its content. One module does all the placing (mtkit/files.py), so the child
kills itself at those moments through it. Then the writer runs again and must place the new version.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
from pathlib import Path

import pytest

from mtkit import files
from tests.writers import KINDS, leftovers, snapshot, write

ROOT = Path(__file__).resolve().parents[2]

# The child: writes the new version of KIND into FOLDER and stops dead at MOMENT of writing TARGET
# (the file, or a file in the folder, that a reader looks at).
CHILD = """
import contextlib, os, signal, sys, time
from pathlib import Path
from mtkit import files
kind, folder, moment, target = sys.argv[1], Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4])

def stop_here():
    print("ready", flush=True)
    time.sleep(600)  # the parent kills us now

if moment == "before_rename":
    def before_place(tmp, final):
        if final == target or target in final.parents:
            stop_here()
    files._before_place = before_place
else:  # mid_write: after the first write into the new content
    class Halfway:
        def __init__(self, f):
            self.f = f
        def write(self, data):
            n = self.f.write(data)
            stop_here()
            return n
        def __getattr__(self, name):
            return getattr(self.f, name)
    real = files.replacing
    @contextlib.contextmanager
    def replacing(path, text=False):
        with real(path, text) as f:
            yield Halfway(f)
    files.replacing = replacing
    real_new_file = files._NewFile  # write_all writes through the same class
    class NewFile(real_new_file):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.file = Halfway(self.file)
    files._NewFile = NewFile
from tests.writers import write
write(kind, folder, "new")
print("finished without stopping", flush=True)
"""

# Killed just before the rename, and in the middle of writing the content (a link writes none).
CASES = [(kind, moment) for kind in KINDS for moment in ("before_rename", "mid_write")
         if (kind, moment) != ("link", "mid_write")]


def kill_while_writing(kind: str, folder: Path, moment: str, target: Path) -> None:
    """Run the child; SIGKILL it once it says it has stopped at `moment`."""
    child = subprocess.Popen([sys.executable, "-c", CHILD, kind, str(folder), moment, str(target)], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([child.stdout], [], [], 120)
        line = child.stdout.readline() if ready else ""
        assert line == "ready\n", f"the child did not stop at {moment}: {line!r} {child.stderr.read()[-2000:]}"
        child.kill()
        child.wait(timeout=60)
        assert child.returncode == -9
    finally:
        if child.poll() is None:
            child.kill()
        child.stdout.close()
        child.stderr.close()


@pytest.mark.slow
@pytest.mark.parametrize("kind,moment", CASES)
def test_a_killed_writer_leaves_the_old_version_whole_and_nothing_beside_it(tmp_path, kind, moment):
    target = write(kind, tmp_path, "old")
    old = snapshot(target)
    assert old and leftovers(tmp_path) == []
    kill_while_writing(kind, tmp_path, moment, target)
    assert snapshot(target) == old  # whole, and the old one
    # New files have no name until they are placed (where the filesystem allows: files._naming), so
    # nothing is left; a directory fills, and a hard link is made, under a temporary name, which the
    # next write of that name removes.
    if kind not in ("ct2_export", "link") and files._naming(tmp_path) is not None:
        assert leftovers(tmp_path) == []
    write(kind, tmp_path, "new")  # runs again: placed, and whatever a dead writer left is swept away
    new = snapshot(target)
    assert new and new != old
    assert leftovers(tmp_path) == []


def test_temporaries_of_live_processes_are_left_alone(tmp_path):
    """The sweep removes temporaries whose process has ended, never another live writer's."""
    target = tmp_path / "a.txt"
    mine = tmp_path / f".a.txt.{os.getppid()}-abcd1234.tmp"  # the test runner's parent: alive
    dead = tmp_path / ".a.txt.999999999-abcd1234.tmp"
    other = tmp_path / ".a.txt.b.999999999-abcd1234.tmp"  # another file's name that starts alike
    for p in (mine, dead, other):
        p.write_text("x")
    files.write_text(target, "new\n")
    assert target.read_text() == "new\n"
    assert mine.exists() and not dead.exists() and other.exists()
