"""Merging an event-service job's range outputs into the job's output.

HDF5 range files are concatenated dataset by dataset along the first (event) axis, in event order,
into one file with provenance attributes (range ids, their first/last events and counts). Other
outputs are archived into a tarball. Files are opened one at a time, and data is copied in bounded
slices, so thousands of range files need neither many file handles nor much memory.
"""

from __future__ import annotations

import gc
import gzip
import json
import logging
import os
import signal
import sqlite3
import sys
import tarfile
from pathlib import Path
from typing import NamedTuple

from hpc_edge.eventservice import extension

logger = logging.getLogger(__name__)

SLICE_ROWS = 65536


class MergeError(Exception):
    """Range outputs could not be merged (missing file, mismatched datasets)."""


class Part(NamedTuple):
    """A finished range's output (a tuple: a job's merge makes one per range, on the tower's loop)."""

    range_id: str
    first_event: int
    last_event: int
    path: str | Path


def read_finished_ranges(path: Path, job_id: int) -> list[tuple]:
    """(range_idx, attempt, first, last, output) of a job's finished ranges, in event order (a job's
    ranges are numbered in event order), as committed: read on a read-only connection of the
    caller's own (from any thread or process, while the tower's connection goes on writing)."""
    db = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)
    try:
        return db.execute("SELECT range_idx, attempt, first_event, last_event, output FROM ranges"
                          " WHERE job_id=? AND state='finished' ORDER BY range_idx", (job_id,)).fetchall()
    finally:
        db.close()


def merge_job(store_path: Path, job_id: int, prefix: str, out_dir: Path, stem: str) -> Path | None:
    """Merge a job's finished ranges (read from the store's committed state); None if it has none.
    MergeError if they cannot be read or merged (the job fails with it; the tower goes on)."""
    try:
        rows = read_finished_ranges(store_path, job_id)
    except sqlite3.Error as exc:
        raise MergeError(f"cannot read job {job_id}'s ranges from {store_path}: {exc}") from exc
    parts = [Part(f"{prefix}{idx}-{attempt}", first, last, out) for idx, attempt, first, last, out in rows]
    return merge_parts(parts, Path(out_dir), stem) if parts else None


def die_with_parent() -> bool:
    """Have the kernel kill this process when the one that started it (the tower) dies, so that no
    merge outlives it and writes the file a restarted tower merges again (Linux; elsewhere a no-op).
    False if the parent died while this was being set up."""
    parent = os.getppid()
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return True
    return os.getppid() == parent


def main(argv: list[str]) -> int:
    if len(argv) != 5 or not argv[1].isdigit():
        print("usage: python -m control_tower.merge STORE JOB_ID RANGE_ID_PREFIX OUT_DIR STEM", file=sys.stderr)
        return 2
    if not die_with_parent():
        return 3
    # a short process whose records (one per range) hold no cycles: no collections, which took 5-20 %
    # of a 50,000-range merge's CPU here
    gc.disable()
    store, job_id, prefix, out_dir, stem = argv
    try:
        path = merge_job(Path(store), int(job_id), prefix, Path(out_dir), stem)
    except MergeError as exc:
        print(json.dumps({"error": str(exc)}), flush=True)
        return 0
    print(json.dumps({"path": None if path is None else str(path)}), flush=True)
    return 0


def merge_parts(parts: list[Part], out_dir: Path, stem: str) -> Path:
    """Merge into ``out_dir/stem.h5`` (all parts HDF5) or ``out_dir/stem.tgz``; return the path."""
    parts = sorted(parts, key=lambda p: p.first_event)
    out_dir.mkdir(parents=True, exist_ok=True)
    hdf5 = bool(parts) and all(extension(os.fspath(p.path)) in (".h5", ".hdf5") for p in parts)
    out = out_dir / f"{stem}.{'h5' if hdf5 else 'tgz'}"
    try:
        return merge_hdf5(parts, out) if hdf5 else archive(parts, out)
    except MergeError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever a range file holds, it fails the job, not the tower
        raise MergeError(f"merging into {out} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        out.with_name(f".{out.name}.tmp").unlink(missing_ok=True)


def merge_hdf5(parts: list[Part], out: Path) -> Path:
    import h5py
    import numpy as np

    tmp = out.with_name(f".{out.name}.tmp")
    names: list[str] | None = None
    with h5py.File(tmp, "w") as dst:
        for part in parts:
            try:
                src_file = h5py.File(part.path, "r")
            except OSError as exc:
                raise MergeError(f"cannot open range output {part.path}: {exc}") from exc
            with src_file as src:
                here = _datasets(src)
                if names is None:
                    names = here
                    for name in names:
                        d = src[name]
                        if d.ndim == 0:
                            raise MergeError(f"{part.path}:{name} is a scalar: only per-event datasets merge")
                        dst.create_dataset(name, shape=(0, *d.shape[1:]), maxshape=(None, *d.shape[1:]),
                                           dtype=d.dtype, chunks=True)
                elif here != names:
                    raise MergeError(f"{part.path} has datasets {here}, the first range had {names}")
                expected = part.last_event - part.first_event + 1
                for name in names:
                    if src[name].ndim == 0 or src[name].shape[0] != expected:
                        raise MergeError(f"{part.path}:{name} holds {src[name].shape[:1] or 'no'} rows, "
                                         f"the range has {expected} events")
                    _append(dst[name], src[name], part.path)
        dst.attrs["range_ids"] = np.array([p.range_id for p in parts], dtype=h5py.string_dtype())
        dst.attrs["range_first_event"] = np.array([p.first_event for p in parts], dtype=np.int64)
        dst.attrs["range_last_event"] = np.array([p.last_event for p in parts], dtype=np.int64)
        dst.attrs["range_events"] = np.array([p.last_event - p.first_event + 1 for p in parts], dtype=np.int64)
        dst.attrs["n_ranges"] = len(parts)
        dst.attrs["n_events"] = int(sum(p.last_event - p.first_event + 1 for p in parts))
    os.replace(tmp, out)
    return out


def _datasets(group) -> list[str]:
    """Paths of every dataset in an HDF5 file, groups included, sorted."""
    import h5py

    found: list[str] = []
    group.visititems(lambda name, obj: found.append(name) if isinstance(obj, h5py.Dataset) else None)
    return sorted(found)


def _append(dst, src, path: Path) -> None:
    if src.shape[1:] != dst.shape[1:] or src.dtype != dst.dtype:
        raise MergeError(f"{path}:{src.name} has shape {src.shape} {src.dtype}, expected (*, {dst.shape[1:]}) "
                         f"{dst.dtype}")
    start = dst.shape[0]
    dst.resize(start + src.shape[0], axis=0)
    for lo in range(0, src.shape[0], SLICE_ROWS):
        hi = min(src.shape[0], lo + SLICE_ROWS)
        dst[start + lo:start + hi] = src[lo:hi]


def archive(parts: list[Part], out: Path) -> Path:
    """A gzipped tar (POSIX ustar) of the range outputs, named by range id.

    With thousands of small range files the archive's cost is its headers: each is built from one
    stat (no owner-name lookups) by ``ustar_header``, headers and empty files go to gzip in blocks of
    about a MiB, and gzip runs at level 1 (a better ratio is not worth a slower merge). Names over
    100 bytes or files of 8 GiB or more go through ``tarfile``."""
    tmp = out.with_name(f".{out.name}.tmp")
    entries = []
    for part in parts:
        try:
            st = os.stat(part.path)
        except OSError as exc:
            raise MergeError(f"cannot archive range output {part.path}: {exc}") from exc
        entries.append((part, f"{part.range_id}{extension(os.fspath(part.path))}".encode(), st.st_size,
                        int(st.st_mtime)))
    if any(len(name) > 100 or size >= 8 * 2**30 for _, name, size, _ in entries):
        return _archive_tarfile(parts, out)
    with gzip.open(tmp, "wb", compresslevel=1) as gz:
        written = 0
        block: list[bytes] = []
        for part, name, size, mtime in entries:
            block.append(ustar_header(name, size, mtime))
            written += 512
            if size:
                gz.write(b"".join(block))
                block = []
                try:
                    with open(part.path, "rb") as f:
                        copied = _copy_exact(f, gz, size)
                except OSError as exc:
                    raise MergeError(f"cannot archive range output {part.path}: {exc}") from exc
                if copied != size:
                    raise MergeError(f"range output {part.path} changed size while being archived")
                pad = -size % 512
                block.append(bytes(pad))
                written += size + pad
            elif len(block) >= 2048:
                gz.write(b"".join(block))
                block = []
        end = written + 1024  # two zero blocks, then up to a whole record, as tar writes it
        block.append(bytes(1024 + -end % tarfile.RECORDSIZE))
        gz.write(b"".join(block))
    os.replace(tmp, out)
    return out


_MODE_OWNER = b"0000644\0" b"0000000\0" b"0000000\0"    # mode 644, uid 0, gid 0
_MAGIC = b"ustar\x0000"
# the checksum counts its own field as eight spaces; the type flag is "0" (a regular file)
_FIXED_SUM = sum(_MODE_OWNER) + 8 * ord(" ") + ord("0") + sum(_MAGIC)


def ustar_header(name: bytes, size: int, mtime: int) -> bytes:
    """The 512-byte POSIX ustar header of a regular file (mode 644, owner 0:0); ``name`` at most 100 bytes.

    Built from its fields with the checksum summed over the variable ones only (the rest is a
    constant), rather than by summing all 512 bytes."""
    size_f = b"%011o\0" % size
    mtime_f = b"%011o\0" % mtime
    checksum = _FIXED_SUM + sum(name) + sum(size_f) + sum(mtime_f)
    return b"".join((name, bytes(100 - len(name)), _MODE_OWNER, size_f, mtime_f, b"%06o\0 0" % checksum,
                     bytes(100), _MAGIC, bytes(247)))


def _copy_exact(src, dst, size: int) -> int:
    copied = 0
    while copied < size:
        chunk = src.read(min(1 << 20, size - copied))
        if not chunk:
            break
        dst.write(chunk)
        copied += len(chunk)
    return copied


def _archive_tarfile(parts: list[Part], out: Path) -> Path:
    tmp = out.with_name(f".{out.name}.tmp")
    with tarfile.open(tmp, "w:gz", compresslevel=1, format=tarfile.GNU_FORMAT) as tar:
        for part in parts:
            try:
                st = os.stat(part.path)
                info = tarfile.TarInfo(f"{part.range_id}{extension(os.fspath(part.path))}")
                info.size, info.mtime, info.mode = st.st_size, int(st.st_mtime), 0o644
                if st.st_size:
                    with open(part.path, "rb") as f:
                        tar.addfile(info, f)
                else:
                    tar.addfile(info)
            except OSError as exc:
                raise MergeError(f"cannot archive range output {part.path}: {exc}") from exc
    os.replace(tmp, out)
    return out


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
