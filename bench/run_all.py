"""Run every benchmark in bench/ one after another and collect their markdown tables.

Each bench_*.py is a plain script that measures mcpfw beside a direct/baseline path in the
same run and prints a markdown table. Results go to stdout and bench/results/latest.md.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    only = set(sys.argv[1:])
    scripts = sorted(p for p in HERE.glob("bench_*.py") if not only or p.stem in only)
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    report = [f"# mcpfw benchmarks ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})\n"]
    failed = []
    for script in scripts:
        print(f"== {script.name}", flush=True)
        proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
        print(proc.stdout, end="")
        if proc.returncode != 0:
            failed.append(script.name)
            print(proc.stderr, file=sys.stderr)
        report.append(f"## {script.stem}\n\n{proc.stdout}\n")
    (out_dir / "latest.md").write_text("\n".join(report))
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
