"""Capped backend logs: the file stays under its cap and keeps its head and its newest lines;
a follower of the file finds its place again after a cut; the pump copies a real child's
output through a pipe."""

from __future__ import annotations

import os
import select
import stat
import subprocess
import sys
import time

from lemonade_jupyter.core.backend_logs import LogFollower, log_path
from lemonade_jupyter.core.capped_log import MIB, CappedLog, LogPump, cut_info

HEAD = "load_tensors:   CPU_Mapped model buffer size =    98.00 MiB\nmain: listening\n"


def numbered(start: int, stop: int) -> bytes:
    return "".join(f"verbose line {n:07d}\n" for n in range(start, stop)).encode()


def numbers(lines: list[str]) -> list[int]:
    return [int(line.split()[-1]) for line in lines if line.startswith("verbose line")]


def test_capped_log_keeps_head_and_newest_lines_under_the_cap(tmp_path):
    path = tmp_path / "m.1.log"
    log = CappedLog(path, 1 * MIB)
    log.write(HEAD.encode())
    total = 0
    for chunk in range(300):  # about 6 MiB in 20 KiB writes
        data = numbered(chunk * 1000, (chunk + 1) * 1000)
        log.write(data)
        total += len(data)
        assert path.stat().st_size <= 1 * MIB
    log.close()
    content = path.read_bytes()
    assert content.startswith(HEAD.encode())
    assert content.endswith(numbered(299_999, 300_000))
    cut = cut_info(content)
    assert cut is not None and 0 < cut.head_len <= 256 * 1024
    head = content[:cut.head_len].decode()
    assert head.endswith("\n")  # whole lines: the first ones, unbroken
    assert numbers(head.splitlines()) == list(range(len(numbers(head.splitlines()))))
    kept = numbers(content[cut.marker_end:].decode().splitlines())
    assert kept == list(range(kept[0], 300_000))  # one unbroken run of the newest lines
    # Every byte is accounted for: what was written is what is kept plus what was cut.
    assert len(HEAD) + total == cut.head_len + (len(content) - cut.marker_end) + cut.cut
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_capped_log_under_its_cap_is_left_whole(tmp_path):
    path = tmp_path / "m.1.log"
    log = CappedLog(path, 1 * MIB)
    log.write(HEAD.encode() + numbered(0, 100))
    log.close()
    assert path.read_bytes() == HEAD.encode() + numbered(0, 100)
    assert cut_info(path.read_bytes()) is None


def test_follower_reads_on_across_cuts_without_repeating_a_line(tmp_path):
    path = log_path(tmp_path, "m", 1)
    log = CappedLog(path, 1 * MIB)
    log.write(HEAD.encode())
    follower = LogFollower(tmp_path, "m")
    seen = numbers(follower.start(10))
    next_line = 0
    for _round in range(40):  # each round writes ~200 KiB: a cut every few rounds
        log.write(numbered(next_line, next_line + 10_000))
        next_line += 10_000
        old, generation, new = follower.step()
        assert generation is None and new == []
        seen += numbers(old)
    log.close()
    assert seen == list(range(next_line))  # read between cuts: nothing lost, nothing twice


def test_follower_that_fell_behind_a_cut_goes_on_from_the_marker(tmp_path):
    path = log_path(tmp_path, "m", 1)
    log = CappedLog(path, 1 * MIB)
    log.write(HEAD.encode() + numbered(0, 20_000))  # past the head's 256 KiB
    follower = LogFollower(tmp_path, "m")
    assert numbers(follower.start(20_000)) == list(range(20_000))
    log.write(numbered(20_000, 200_000))  # about 4 MiB: the follower's place is cut meanwhile
    log.close()
    lines: list[str] = []
    for _ in range(10):
        old, _generation, _new = follower.step()
        lines += old
    assert "bytes of this log were cut here" in lines[0]  # the reader is told, then goes on
    tail = numbers(lines[1:])
    assert tail == list(range(tail[0], 200_000)) and tail[0] > 20_000


class SlowLog(CappedLog):
    """A log on a slow disk: each write takes a while, so the pump lags behind the child."""

    def write(self, data: bytes) -> None:
        time.sleep(0.02)
        super().write(data)


def test_pump_copies_a_child_output_and_catches_up(tmp_path):
    path = tmp_path / "child.1.log"
    read_fd, write_fd = os.pipe()
    script = ("import sys\nfor n in range(30000): sys.stdout.write(f'verbose line {n:07d}\\n')\n"
              "sys.stdout.flush()\nsys.stderr.write('printed\\n')\nsys.stderr.flush()\n"
              "sys.stdin.read()\n")
    child = subprocess.Popen([sys.executable, "-c", script], stdout=write_fd,
                             stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    os.close(write_fd)
    pump = LogPump(read_fd, SlowLog(path, 1 * MIB))  # lags behind the child
    pump.start()
    try:
        # Once the child says it printed everything (and waits, pipe open), caught up means
        # every line is in the file.
        assert select.select([child.stderr], [], [], 30)[0], "the child did not print"
        assert child.stderr.readline() == b"printed\n"
        assert pump.wait_caught_up(30)
        assert numbers(path.read_text().splitlines()) == list(range(30_000))
    finally:
        child.communicate(b"", timeout=30)
    assert pump.join(30)
    assert numbers(path.read_text().splitlines()) == list(range(30_000))
