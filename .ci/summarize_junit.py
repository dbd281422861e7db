"""Sum pytest JUnit XML reports into one line: ``tests: N passed, N failed, N skipped``.

Usage: python3 .ci/summarize_junit.py [REPORT_DIR]   (default: .reports)

Errors count as failed; a report that cannot be parsed counts as one failed test.
Exit status: 0 when at least one test passed, 3 when none did. Stdlib only.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def count(report: Path) -> tuple[int, int, int]:
    """(passed, failed, skipped) for one JUnit XML file."""
    passed = failed = skipped = 0
    for case in ET.parse(report).getroot().iter("testcase"):
        outcomes = {child.tag for child in case}
        if outcomes & {"failure", "error"}:
            failed += 1
        elif "skipped" in outcomes:
            skipped += 1
        else:
            passed += 1
    return passed, failed, skipped


def main(argv: list[str]) -> int:
    report_dir = Path(argv[1]) if len(argv) > 1 else Path(".reports")
    reports = sorted(report_dir.glob("*.xml"))
    passed = failed = skipped = 0
    for report in reports:
        try:
            p, f, s = count(report)
        except (ET.ParseError, OSError) as exc:
            print(f"summarize_junit: cannot read {report}: {exc}", file=sys.stderr)
            p, f, s = 0, 1, 0
        passed, failed, skipped = passed + p, failed + f, skipped + s
    if not reports:
        print(f"summarize_junit: no JUnit reports in {report_dir}/", file=sys.stderr)
    elif passed == 0:
        print("summarize_junit: no test passed", file=sys.stderr)
    print(f"tests: {passed} passed, {failed} failed, {skipped} skipped", flush=True)
    return 0 if passed > 0 else 3


if __name__ == "__main__":
    sys.exit(main(sys.argv))
