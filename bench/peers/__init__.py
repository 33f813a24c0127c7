"""Peer scripts the harness runs as subprocesses (stdlib only, except parsl_true.py)."""
