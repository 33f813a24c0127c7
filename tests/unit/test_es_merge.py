"""Merging an event-service job's range outputs: HDF5 range files into one file in event order with
provenance, anything else into a tarball named by range id, and thousands of range files under a
small open-file limit (the merge opens one file at a time)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

from control_tower.merge import MergeError, Part, merge_parts


def values_of(events: np.ndarray) -> np.ndarray:
    """What a toy detector writes for each event: an 8x8 image that names its event."""
    grid = np.arange(64, dtype=np.float32).reshape(8, 8)
    return (events[:, None, None] * 1000 + grid[None]).astype(np.float32)


def write_range(path: Path, first: int, last: int, **extra) -> Path:
    events = np.arange(first, last + 1, dtype=np.int64)
    with h5py.File(path, "w") as f:
        f["event_number"] = events
        f["values"] = values_of(events)
        for name, data in extra.items():
            f[name] = data
    return path


def range_parts(d: Path, bounds: list[tuple[int, int]], job_id: int = 7) -> list[Part]:
    d.mkdir(parents=True, exist_ok=True)
    parts = []
    for idx, (first, last) in enumerate(bounds):
        rid = f"1-{job_id}-0-{idx}-1"
        parts.append(Part(rid, first, last, write_range(d / f"{rid}.h5", first, last)))
    return parts


def ids_of(f: h5py.File) -> list[str]:
    return [x.decode() if isinstance(x, bytes) else str(x) for x in f.attrs["range_ids"]]


BOUNDS = [(0, 9), (10, 19), (20, 29), (30, 34)]


def test_hdf5_ranges_given_out_of_order_merge_in_event_order(tmp_path):
    parts = range_parts(tmp_path / "ranges", BOUNDS)
    shuffled = [parts[2], parts[0], parts[3], parts[1]]

    out = merge_parts(shuffled, tmp_path / "out", "toysim.7")

    assert out == tmp_path / "out" / "toysim.7.h5"
    with h5py.File(out, "r") as f:
        assert sorted(f.keys()) == ["event_number", "values"]
        events = f["event_number"][:]
        assert events.dtype == np.int64
        assert events.tolist() == list(range(35))
        values = f["values"][:]
        assert (values.shape, values.dtype) == ((35, 8, 8), np.float32)
        assert np.array_equal(values, values_of(events))
        assert ids_of(f) == ["1-7-0-0-1", "1-7-0-1-1", "1-7-0-2-1", "1-7-0-3-1"]
        assert f.attrs["range_first_event"].tolist() == [0, 10, 20, 30]
        assert f.attrs["range_last_event"].tolist() == [9, 19, 29, 34]
        assert f.attrs["range_events"].tolist() == [10, 10, 10, 5]
        assert (int(f.attrs["n_ranges"]), int(f.attrs["n_events"])) == (4, 35)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["toysim.7.h5"]


def test_a_short_last_range_given_first_still_lands_last(tmp_path):
    parts = range_parts(tmp_path / "ranges", [(5, 5), (0, 4)])
    out = merge_parts(parts, tmp_path / "out", "m")
    with h5py.File(out, "r") as f:
        assert f["event_number"][:].tolist() == [0, 1, 2, 3, 4, 5]
        assert f.attrs["range_first_event"].tolist() == [0, 5]


def test_a_large_range_is_copied_whole(tmp_path, monkeypatch):
    import control_tower.merge as merge

    monkeypatch.setattr(merge, "SLICE_ROWS", 7)  # several slices per range
    parts = range_parts(tmp_path / "ranges", [(0, 29), (30, 44)])
    out = merge_parts(parts[::-1], tmp_path / "out", "m")
    with h5py.File(out, "r") as f:
        assert f["event_number"][:].tolist() == list(range(45))
        assert np.array_equal(f["values"][:], values_of(np.arange(45)))


@pytest.mark.parametrize("change", ["missing dataset", "extra dataset", "other shape", "other dtype"])
def test_mismatched_datasets_fail_the_merge_naming_the_file(tmp_path, change):
    parts = range_parts(tmp_path / "ranges", BOUNDS)
    odd = parts[2].path
    with h5py.File(odd, "a") as f:
        if change == "missing dataset":
            del f["values"]
        elif change == "extra dataset":
            f["truth"] = np.zeros(10)
        elif change == "other shape":
            del f["values"]
            f["values"] = np.zeros((10, 4, 4), dtype=np.float32)
        else:
            del f["values"]
            f["values"] = np.zeros((10, 8, 8), dtype=np.float64)

    with pytest.raises(MergeError, match=str(odd)):
        merge_parts(parts, tmp_path / "out", "m")
    assert not (tmp_path / "out" / "m.h5").exists()


def test_a_missing_range_file_fails_the_merge(tmp_path):
    parts = range_parts(tmp_path / "ranges", BOUNDS)
    parts[1].path.unlink()

    with pytest.raises(MergeError, match=str(parts[1].path)):
        merge_parts(parts, tmp_path / "out", "m")
    assert not (tmp_path / "out" / "m.h5").exists()


def test_a_range_file_that_is_not_hdf5_fails_the_merge(tmp_path):
    parts = range_parts(tmp_path / "ranges", BOUNDS)
    parts[3].path.write_text("not an HDF5 file\n")

    with pytest.raises(MergeError, match=str(parts[3].path)):
        merge_parts(parts, tmp_path / "out", "m")


def test_a_scalar_dataset_in_the_range_files_fails_as_a_merge_error(tmp_path):
    d = tmp_path / "ranges"
    d.mkdir()
    parts = [Part(f"1-7-0-{i}-1", 10 * i, 10 * i + 9, write_range(d / f"r{i}.h5", 10 * i, 10 * i + 9, version=3))
             for i in range(2)]

    with pytest.raises(MergeError):
        merge_parts(parts, tmp_path / "out", "m")


def test_datasets_in_groups_are_merged_or_refused_never_dropped(tmp_path):
    d = tmp_path / "ranges"
    d.mkdir()
    parts = [Part(f"1-7-0-{i}-1", 10 * i, 10 * i + 9,
                  write_range(d / f"r{i}.h5", 10 * i, 10 * i + 9, **{"truth/energy": np.full(10, float(i))}))
             for i in range(2)]

    try:
        out = merge_parts(parts, tmp_path / "out", "m")
    except MergeError:
        return
    with h5py.File(out, "r") as f:
        assert "truth/energy" in f
        assert f["truth/energy"][:].tolist() == [0.0] * 10 + [1.0] * 10


# ---- other outputs: a tarball -----------------------------------------------------------------

def test_outputs_that_are_not_hdf5_are_archived_by_range_id(tmp_path):
    d = tmp_path / "ranges"
    d.mkdir()
    parts = []
    for idx, (first, last) in enumerate([(10, 19), (0, 9), (20, 24)]):
        path = d / f"output_{idx}.pool.root"
        path.write_bytes(f"events {first}..{last}\n".encode() * (idx + 1))
        parts.append(Part(f"1-7-0-{idx}-1", first, last, path))

    out = merge_parts(parts, tmp_path / "out", "toysim.7")

    assert out == tmp_path / "out" / "toysim.7.tgz"
    with tarfile.open(out, "r:gz") as tar:
        assert tar.getnames() == ["1-7-0-1-1.root", "1-7-0-0-1.root", "1-7-0-2-1.root"]
        for part in parts:
            assert tar.extractfile(f"{part.range_id}.root").read() == part.path.read_bytes()


def test_the_archive_reads_back_with_gnu_tar_sizes_times_and_bytes_intact(tmp_path):
    # GNU tar, the tool a user unpacks it with: it checks every header's checksum and the end blocks
    d = tmp_path / "ranges"
    d.mkdir()
    parts = []
    for idx, size in enumerate([0, 1, 511, 512, 513, 70_000]):
        path = d / f"r{idx}.out"
        path.write_bytes(bytes(range(256)) * (size // 256) + bytes(size % 256))
        os.utime(path, (1_700_000_000 + idx, 1_700_000_000 + idx))
        parts.append(Part(f"1-7-0-{idx}-1", idx, idx, path))
    out = merge_parts(parts, tmp_path / "out", "t")

    listing = subprocess.run(["tar", "-tzvf", str(out), "--utc", "--full-time"], capture_output=True, text=True,
                             check=True)
    assert listing.stderr == ""
    rows = [line.split() for line in listing.stdout.splitlines()]
    assert [(r[0], int(r[2]), r[5]) for r in rows] == [
        ("-rw-r--r--", p.path.stat().st_size, f"{p.range_id}.out") for p in parts]
    assert rows[1][3:5] == ["2023-11-14", "22:13:21"]
    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    subprocess.run(["tar", "-xzf", str(out), "-C", str(unpacked)], check=True)
    for part in parts:
        assert (unpacked / f"{part.range_id}.out").read_bytes() == part.path.read_bytes()


def test_range_ids_too_long_for_a_ustar_name_are_archived_whole(tmp_path):
    path = tmp_path / "r.out"
    path.write_text("x")
    long_id = "1-7-0-" + "9" * 120 + "-1"
    out = merge_parts([Part(long_id, 0, 0, path)], tmp_path / "out", "t")
    with tarfile.open(out, "r:gz") as tar:
        assert tar.getnames() == [f"{long_id}.out"]


def test_hdf5_mixed_with_other_outputs_is_archived(tmp_path):
    parts = range_parts(tmp_path / "ranges", [(0, 4)])
    log = tmp_path / "ranges" / "r1.log"
    log.write_text("range 1\n")
    parts.append(Part("1-7-0-1-1", 5, 9, log))

    out = merge_parts(parts, tmp_path / "out", "m")

    assert out.name == "m.tgz"
    with tarfile.open(out, "r:gz") as tar:
        assert tar.getnames() == ["1-7-0-0-1.h5", "1-7-0-1-1.log"]


def test_a_missing_file_fails_the_archive(tmp_path):
    path = tmp_path / "gone.txt"
    with pytest.raises(MergeError, match=str(path)):
        merge_parts([Part("1-7-0-0-1", 0, 9, path)], tmp_path / "out", "m")
    assert not (tmp_path / "out" / "m.tgz").exists()


# ---- scale: thousands of range files, a small open-file limit -----------------------------------

N_RANGES, EVENTS_PER_RANGE, NOFILE = 3000, 2, 64

CHILD = textwrap.dedent("""
    import json, resource, sys
    from pathlib import Path

    resource.setrlimit(resource.RLIMIT_NOFILE, (%(nofile)d, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    held = []
    try:  # the limit bites: this process cannot hold the range files open together
        for path in json.load(open(sys.argv[1]))[:200]:
            held.append(open(path[3], "rb"))
        sys.exit("opened 200 files under RLIMIT_NOFILE=%(nofile)d: the limit is not in force")
    except OSError:
        pass
    finally:
        for f in held:
            f.close()

    from control_tower.merge import Part, merge_parts
    parts = [Part(rid, first, last, Path(path)) for rid, first, last, path in json.load(open(sys.argv[1]))]
    print(merge_parts(parts, Path(sys.argv[2]), "toysim.7"))
""") % {"nofile": NOFILE}


def test_thousands_of_range_files_merge_under_a_small_open_file_limit(tmp_path):
    d = tmp_path / "ranges"
    d.mkdir()
    manifest = []
    for idx in range(N_RANGES):
        first = idx * EVENTS_PER_RANGE
        rid = f"1-7-0-{idx}-1"
        path = d / f"{rid}.h5"
        with h5py.File(path, "w") as f:
            f["event_number"] = np.arange(first, first + EVENTS_PER_RANGE, dtype=np.int64)
            f["values"] = np.full((EVENTS_PER_RANGE, 8, 8), idx, dtype=np.float32)
        manifest.append((rid, first, first + EVENTS_PER_RANGE - 1, str(path)))
    random.Random(7).shuffle(manifest)
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))

    proc = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "manifest.json"), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)

    assert proc.returncode == 0, proc.stderr[-3000:]
    out = Path(proc.stdout.strip())
    assert out == tmp_path / "out" / "toysim.7.h5"
    n_events = N_RANGES * EVENTS_PER_RANGE
    with h5py.File(out, "r") as f:
        assert f["event_number"][:].tolist() == list(range(n_events))
        values = f["values"][:]
        assert values.shape == (n_events, 8, 8)
        assert np.array_equal(values[:, 0, 0], np.repeat(np.arange(N_RANGES, dtype=np.float32), EVENTS_PER_RANGE))
        assert (int(f.attrs["n_ranges"]), int(f.attrs["n_events"])) == (N_RANGES, n_events)
        assert f.attrs["range_first_event"].tolist() == list(range(0, n_events, EVENTS_PER_RANGE))
        assert ids_of(f) == [f"1-7-0-{i}-1" for i in range(N_RANGES)]
