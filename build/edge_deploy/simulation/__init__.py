"""A simulated fleet of real Docker engines and sshd on this host, for tests, benchmarks and the quickstart."""

from __future__ import annotations
