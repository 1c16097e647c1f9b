"""summary.md of a benchmarks/gpu_check.sh run: what ran, what failed or was skipped and why, the
test counts, the step table and the throughput table, and the log tails of the parts that failed.

    python benchmarks/gpu_summary.py OUT WORK DRY ELAPSED_S

OUT: the check's output folder (env.txt, pytest.xml, steps.json, throughput.md, ... as far as they
were written); WORK: its scratch folder (status.tsv: part, status, seconds, note per line; the
steps/throughput logs); DRY: 1 for the CPU dry run; ELAPSED_S: the check's wall time so far.
Standard library only, so it works whatever else is broken.
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

LOGS = {"env": "OUT/env.txt", "install": "OUT/build.log", "build": "OUT/build.log", "pytest": "OUT/pytest.log",
        "steps": "WORK/steps.log", "throughput": "WORK/throughput.log"}


def tail(path: Path, lines: int = 25) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else f"({path.name} not written)"


def parts_table(status: Path) -> tuple[list[str], list[list[str]]]:
    rows = [line.split("\t") for line in status.read_text().splitlines() if line.strip()] if status.exists() else []
    lines = ["| part | status | seconds | note |", "|---|---|---|---|"]
    lines += [f"| {name} | {state} | {seconds} | {note} |" for name, state, seconds, note in rows]
    return lines, rows


def tests_section(xml: Path) -> list[str]:
    """Counts from pytest's junit XML, and each failure's first line."""
    if not xml.exists():
        return ["No pytest.xml: pytest did not run or did not finish."]
    root = ET.parse(xml).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    n, failures, errors, skipped = (int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped"))
    passed = n - failures - errors - skipped
    lines = [f"{n} tests: {passed} passed, {failures} failed, {errors} errors, {skipped} skipped ({float(suite.get('time', 0)):.0f} s)."]
    for case in suite.iter("testcase"):
        for kind in ("failure", "error"):
            problem = case.find(kind)
            if problem is not None:
                first = (problem.get("message") or problem.text or "").strip().splitlines()[:1]
                lines.append(f"- {kind}: `{case.get('classname')}.{case.get('name')}`: {first[0][:300] if first else ''}")
    skips = {(c.find("skipped").get("message") or "").strip() for c in suite.iter("testcase") if c.find("skipped") is not None}
    if skips:
        lines.append("- skipped because: " + "; ".join(sorted(s[:120] for s in skips)))
    return lines


def number(value: object, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def steps_section(path: Path) -> list[str]:
    """The per-step table of benchmarks/gpu_steps.py and the host syncs it found."""
    if not path.exists():
        return ["No steps.json: benchmarks/gpu_steps.py did not finish."]
    data = json.loads(path.read_text())
    launches = "kernels_per_step" if any("kernels_per_step" in r for t in ("kernelgan", "zssr") for r in data.get(t, [])) else "aten_ops_per_step"
    header = f"| trainer | members | step ms | per member ms | {launches.replace('_', ' ')} | memcpy / step | syncs / step | peak MiB |"
    lines = [f"{data.get('device')}, torch {data.get('torch')}; masked crop: {data.get('masked_crop')}.", "", header,
             "|---|---|---|---|---|---|---|---|"]
    syncs = []
    for trainer in ("kernelgan", "zssr", "kernelgan-graphs", "zssr-graphs"):
        for r in data.get(trainer, []):
            if "error" in r:
                lines.append(f"| {trainer} | {r['members']} | {r['error']} | | | | | |")
                continue
            lines.append(f"| {trainer} | {r['members']} | {number(r.get('step_ms'))} | {number(r.get('per_member_ms'))} | "
                         f"{number(r.get(launches), 0)} | {number(r.get('memcpy_per_step'), 1)} | {number(r.get('syncs_per_step'), 1)} | "
                         f"{number(r.get('peak_mib'), 0)} |")
            if "sync_sites" in r:
                syncs.append(f"- {trainer}: " + (", ".join(f"`{s}` x{n:g}" for s, n in r["sync_sites"].items()) or "none"))
    if syncs:
        lines += ["", "Host syncs per step (torch.cuda.set_sync_debug_mode, our innermost line):", *syncs]
    return lines


def main(argv: list[str]) -> None:
    out, work, dry, elapsed = Path(argv[0]), Path(argv[1]), argv[2] == "1", argv[3]
    table, rows = parts_table(work / "status.tsv")
    env = (out / "env.txt").read_text(errors="replace").splitlines() if (out / "env.txt").exists() else []
    device = [line for line in env if line.startswith(("torch ", "device:"))]
    text = [f"# GPU check summary ({'CPU dry run' if dry else 'GPU run'}, {elapsed} s)", "", *device, "", *table, "",
            "## Tests", "", *tests_section(out / "pytest.xml"), "", "## Steps", "", *steps_section(out / "steps.json"), "",
            "## Throughput", ""]
    throughput = out / "throughput.md"
    text += [line for line in throughput.read_text().splitlines() if not line.startswith(("# ", "<!--"))] \
        if throughput.exists() else ["No throughput.md: benchmarks/gpu_throughput.py did not finish."]
    bad = [name for name, state, *_ in rows if state in ("failed", "timeout")]
    if bad:
        text += ["", "## Logs of the parts that failed"]
        for name in bad:
            log = Path(LOGS.get(name, "").replace("OUT", str(out)).replace("WORK", str(work)))
            text += ["", f"### {name} ({log.name}, last lines)", "", "```", tail(log), "```"]
    (out / "summary.md").write_text("\n".join(text).rstrip() + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
