"""The worker processes that read and redact log tails: the answer is the redacted tail, at
most ``max_workers`` processes serve any number of requests, a dead worker is replaced, and
``close`` leaves none running."""

from __future__ import annotations

import asyncio

from lemonade_jupyter.core.log_worker import TailReader, tail_events


def test_tail_reader_answers_redacted_tails_from_a_bounded_set_of_workers(tmp_path):
    path = tmp_path / "m.1.log"
    path.write_text("".join(f"line {n} api_key: s3cret-{n} token=abc\n" for n in range(50)))
    expected = tail_events(path, 5, ["abc"])  # what the server would compute itself
    assert b"s3cret" not in expected[0] and b"abc" not in expected[0]

    async def main() -> None:
        reader = TailReader(max_workers=2)
        try:
            answers = await asyncio.gather(*(reader.read(path, 5, ["abc"]) for _ in range(12)))
            assert answers == [expected] * 12
            workers = [w.proc for w in reader._all]
            assert len(workers) == 2
            for proc in workers:  # a worker that died while idle is replaced
                proc.kill()
                await proc.wait()
            assert await reader.read(path, 5, ["abc"]) == expected
            assert len(reader._all) <= 2
        finally:
            await reader.close()
        assert all(w.proc.returncode is not None for w in reader._all)
        assert reader._all == set()

    asyncio.run(main())
