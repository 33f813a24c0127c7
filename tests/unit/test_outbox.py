"""The relay's outbox: unacknowledged updates kept, spilled to disk past the memory limit, resent."""

from __future__ import annotations

from hpc_edge.outbox import Outbox


def test_spills_past_the_limit_and_gives_every_update_back(tmp_path):
    box = Outbox(memory_limit=1000, spool_dir=tmp_path / "spool")
    payloads = {seq: bytes([seq]) * 300 for seq in range(1, 11)}
    for seq, data in payloads.items():
        box.add(seq, data, sent=0.0, job_ids=[seq], range_ids=[f"r{seq}"])
    assert box.in_memory <= 1000
    spilled = sorted(p.name for p in (tmp_path / "spool").iterdir())
    assert len(spilled) == 7 and spilled[0] == "000000000001.msg"   # the oldest went to disk
    assert all(box.data(seq) == data for seq, data in payloads.items())
    assert box.known_jobs() == set(range(1, 11)) and "r10" in box.known_ranges()
    box.ack_upto(5)                                   # a tower's welcome: everything up to 5 is in
    box.ack(9)                                        # an ack of one
    assert sorted(box.items) == [6, 7, 8, 10]
    assert sorted(p.name for p in (tmp_path / "spool").iterdir()) == ["000000000006.msg", "000000000007.msg"]
    assert box.due(now=100.0, resend_s=30) == [6, 7, 8, 10]
    for seq in (6, 7, 8, 10):
        box.ack(seq)
    assert not box and box.in_memory == 0
    box.close()
    assert not (tmp_path / "spool").exists()
