"""Verdict of one VM run, from the files vm/guest-run.sh left in a results directory.

    python3 vm/summary.py RESULTS_DIR BACKEND...

Prints one line for `tcptrace-bpf check`, one per backend and a total; exits 1 if check did
not pass (exit 0, offsets compared and none mismatched) or any backend failed. Run in the
guest (console progress) and on the host (the final lines of `make vm-test`).
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def check_verdict(res: Path) -> tuple[bool, str]:
    rc = int((res / "check.rc").read_text().split()[0])
    try:
        report = json.loads((res / "check.json").read_text())
        offsets = report["offsets"]
        compared, mismatched = int(offsets["compared"]), offsets["mismatched"]
    except (ValueError, KeyError, TypeError) as exc:
        err = (res / "check.err").read_text().strip().splitlines()
        return False, f"exit {rc}, no report ({exc!r}): {err[-1] if err else ''}"
    bad = [c["name"] + ": " + c["detail"] for c in report.get("checks", []) if c.get("status") == "fail"]
    ok = rc == 0 and report.get("ok") is True and compared > 0 and not mismatched
    detail = f"exit {rc}, offsets compared={compared} mismatched={len(mismatched)}"
    if mismatched:
        detail += f" {mismatched[:5]}"
    if bad:
        detail += " failed: " + "; ".join(bad)
    return ok, detail


def backend_verdict(res: Path, backend: str) -> tuple[bool, dict]:
    rc, seconds = (res / f"{backend}.rc").read_text().split()
    counts = {"passed": 0, "failed": 0, "skipped": 0, "seconds": int(seconds), "rc": int(rc)}
    try:
        suite = ET.parse(res / f"{backend}.xml").getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        total = int(suite.get("tests"))
        failed = int(suite.get("failures")) + int(suite.get("errors"))
        skipped = int(suite.get("skipped"))
        counts.update(passed=total - failed - skipped, failed=failed, skipped=skipped)
    except (OSError, ET.ParseError, TypeError, AttributeError):
        counts["failed"] = max(1, counts["failed"])  # pytest died before writing its report
    ok = counts["rc"] == 0 and counts["failed"] == 0 and counts["passed"] > 0
    return ok, counts


def main(res: Path, backends: list[str]) -> int:
    ok, detail = check_verdict(res)
    print(f"check: {'ok' if ok else 'FAIL'} ({detail})")
    all_ok, passed, failed = ok, 0, 0
    for backend in backends:
        ok, c = backend_verdict(res, backend)
        all_ok &= ok
        passed, failed = passed + c["passed"], failed + c["failed"]
        print(f"{backend}: {c['passed']} passed, {c['failed']} failed, {c['skipped']} skipped "
              f"in {c['seconds']}s{'' if ok else ' (FAIL, pytest exit ' + str(c['rc']) + ')'}")
    print(f"vm: {passed} passed, {failed} failed")
    return 0 if all_ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main(Path(sys.argv[1]), sys.argv[2:]))
    except OSError as exc:  # a result file is missing: the run did not finish
        print(f"vm: results incomplete: {exc}")
        sys.exit(1)
