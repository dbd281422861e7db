"""Demo of what Partita does today, run against the installed packages (`nox -s demo`).

It runs the `partita` command line: `partita --help`, then `partita show FILE` on a copy of
every example in docs/examples/*.json. Everything it used and printed is kept in a new run
folder, runs/demo-<UTC timestamp>/ (ignored by git), whose path it prints at the end.

Exit status: 0 when every command succeeded, 1 when one failed or there was nothing to show,
2 when the `partita` command is not installed.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
COMMAND_TIMEOUT_S = 120


def find_cli() -> str | None:
    """The `partita` script of this interpreter's environment, else the one on PATH."""
    beside = Path(sys.executable).with_name("partita")
    if beside.is_file():
        return str(beside)
    return shutil.which("partita")


def new_run_folder(runs_dir: Path) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for attempt in range(100):
        folder = runs_dir / (f"demo-{stamp}" if attempt == 0 else f"demo-{stamp}-{attempt}")
        try:
            folder.mkdir(parents=True)
        except FileExistsError:
            continue
        return folder
    raise RuntimeError(f"could not create a new run folder under {runs_dir}")


def run(command: list[str], transcript: Path) -> bool:
    """Run one command, echo its output, keep a transcript; True when it exited 0."""
    shown = " ".join(["partita", *command[1:]])
    print(f"\n$ {shown}", flush=True)
    try:
        proc = subprocess.run(
            command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        message = f"timed out after {COMMAND_TIMEOUT_S} s"
        print(message, file=sys.stderr)
        transcript.write_text(f"$ {shown}\n{message}\n", encoding="utf-8")
        return False
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr)
    transcript.write_text(
        f"$ {shown}\n[exit {proc.returncode}]\n--- stdout ---\n{proc.stdout}"
        f"--- stderr ---\n{proc.stderr}",
        encoding="utf-8",
    )
    if proc.returncode != 0:
        print(f"[exit {proc.returncode}]", file=sys.stderr)
    return proc.returncode == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=Path, default=REPO_ROOT / "docs" / "examples")
    parser.add_argument("--runs-dir", type=Path, default=REPO_ROOT / "runs")
    args = parser.parse_args(argv)

    cli = find_cli()
    if cli is None:
        print("demo: the `partita` command is not installed (pip install ./packages/formats)")
        return 2

    folder = new_run_folder(args.runs_dir)
    examples_dir = folder / "examples"
    examples_dir.mkdir()
    examples = sorted(args.examples.glob("*.json"))
    copies = [Path(shutil.copy2(example, examples_dir / example.name)) for example in examples]
    print(f"demo: {len(copies)} example file(s) from {args.examples} copied to {examples_dir}")

    results = [run([cli, "--help"], folder / "help.txt")]
    for copy in copies:
        results.append(run([cli, "show", str(copy)], folder / f"show-{copy.stem}.txt"))

    print(f"\ndemo: {sum(results)} of {len(results)} command(s) succeeded")
    if not copies:
        print(f"demo: no *.json example in {args.examples}, so nothing was shown")
    print(f"demo: run folder {folder}")
    return 0 if all(results) and copies else 1


if __name__ == "__main__":
    sys.exit(main())
