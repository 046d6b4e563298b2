"""Run every benchmark and print one table. Run on an otherwise idle machine:

    python benchmarks/run_all.py
"""
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPTS = ["linear_forward.py", "hwa_step.py", "memory_and_sweep.py"]


def main():
    rows = []
    for s in SCRIPTS:
        print(f"== {s}", flush=True)
        out = subprocess.run([sys.executable, os.path.join(HERE, s)], capture_output=True, text=True)
        text = out.stdout.strip()
        print(text)
        if out.returncode:
            print(out.stderr[-2000:])
        for line in text.splitlines():
            m = re.search(r"ratio ([0-9.]+)x(?: \(target <= ([0-9.]+)x\))?", line)
            if m:
                rows.append((line.split(":")[0][:60], m.group(1) + "x", (m.group(2) + "x") if m.group(2) else ""))
            m = re.search(r"best program\+drift ([0-9.]+) s", line)
            if m:
                rows.append(("MiniLM program + drift", m.group(1) + " s", "1 s"))
            m = re.search(r"held by the layers: ([0-9.]+) B/weight", line)
            if m:
                rows.append(("programmed state per weight", m.group(1) + " B", ""))
    print("\n| benchmark | measured | target |\n|---|---:|---:|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} |")


if __name__ == "__main__":
    main()
