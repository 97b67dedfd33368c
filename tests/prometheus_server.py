"""A real Prometheus on loopback for the tests that scrape the exporter (tests/kernel's live
exporter, tests/container's image) and ask it PromQL through the HTTP API."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

from tests.background import free_port
from tests.conftest import require


def http_get(url: str, timeout: float = 10) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


class PrometheusServer:
    """`prometheus` with `config` (a prometheus.yml already in `workdir`, next to the rule
    files it names), storing in workdir/data; `base` is its URL once it answers."""

    def __init__(self, workdir: Path, config: str = "prometheus.yml"):
        require(shutil.which("prometheus") is not None, "needs prometheus (Debian package)")
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(["prometheus", f"--config.file={workdir / config}",
                                      f"--storage.tsdb.path={workdir / 'data'}",
                                      f"--web.listen-address=127.0.0.1:{self.port}"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            try:
                http_get(self.base + "/-/ready", 1)
                return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("prometheus did not become ready in 20 s")

    def query(self, expr: str) -> list:
        url = self.base + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        doc = json.loads(http_get(url))
        assert doc["status"] == "success", doc
        return doc["data"]["result"]

    def wait_scrapes(self, job: str, count: int = 2, timeout: float = 30) -> None:
        """Until `count` successful scrapes of `job` are stored: Prometheus hands targets to
        its scrapers up to 5 s after start, and increases count from the first sample."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.query(f'sum_over_time(up{{job="{job}"}}[1m]) >= {count}'):
                    return
            except (OSError, AssertionError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"prometheus never scraped job {job} {count} times")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
