"""Rows of results, their verdicts against their targets, and the JSON/Markdown output."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .stats import compare, summarize


@dataclass(frozen=True)
class Target:
    """The target of one row: ``kind`` is max_diff, min_ratio, or max_value or min_value (of
    the subject)."""

    kind: str
    limit: float
    text: str

    def check(self, cmp: dict[str, Any]) -> str:
        value = {"max_diff": cmp.get("diff"), "min_ratio": cmp.get("ratio"),
                 "max_value": cmp.get("subject"), "min_value": cmp.get("subject")}[self.kind]
        if value is None:
            return "n/a"
        ok = value >= self.limit if self.kind.startswith("min_") else value <= self.limit
        return "met" if ok else "missed"


@dataclass
class Row:
    """One figure: a subject measured side by side with its baseline."""

    section: str
    figure: str
    unit: str
    base_label: str
    base: list[float]
    subject_label: str
    subject: list[float]
    stat: str = "median"
    target: Target | None = None
    note: str = ""
    cmp: dict[str, Any] = field(init=False)
    verdict: str = field(init=False)

    def __post_init__(self) -> None:
        self.cmp = compare(self.base, self.subject, self.stat)
        self.verdict = self.target.check(self.cmp) if self.target else "—"

    def to_json(self) -> dict[str, Any]:
        return {
            "section": self.section, "figure": self.figure, "unit": self.unit,
            "stat": self.stat, "baseline": {"label": self.base_label, **summarize(self.base)},
            "subject": {"label": self.subject_label, **summarize(self.subject)},
            "comparison": self.cmp,
            "target": self.target.text if self.target else None, "verdict": self.verdict,
            "note": self.note,
        }


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "—"
    a = abs(value)
    if a >= 100:
        text = f"{value:.0f}"
    elif a >= 10:
        text = f"{value:.1f}"
    elif a >= 1:
        text = f"{value:.2f}"
    elif a >= 0.01:
        text = f"{value:.3f}"
    else:
        text = f"{value:.4f}"
    return text


def _cell(values: list[float], stat: str, unit: str) -> str:
    s = summarize(values)
    if not s["n"]:
        return "—"
    if stat == "p95":
        return f"p95 {_fmt(s['p95'], unit)} (n={s['n']})"
    if s["n"] == 1:
        return f"{_fmt(s['median'], unit)} (n=1)"
    lo, hi = ("p5", "p95") if s["n"] >= 10 else ("min", "max")
    return (f"{_fmt(s['median'], unit)} ({lo}–{hi}: {_fmt(s[lo], unit)}–{_fmt(s[hi], unit)}, "
            f"n={s['n']})")


def _diff_cell(row: Row) -> str:
    c = row.cmp
    if c["diff"] is None:
        return "—"
    sign = "+" if c["diff"] >= 0 else ""
    text = f"{sign}{_fmt(c['diff'], row.unit)}"
    if c.get("diff_ci90"):
        lo, hi = c["diff_ci90"]
        text += f" [{_fmt(lo, row.unit)}, {_fmt(hi, row.unit)}]"
    return text


def markdown_table(rows: list[Row]) -> str:
    head = ("| Section | Figure (unit) | Baseline: median (spread, n) | Subject: median (spread, n)"
            " | Ratio | Diff [90% CI] | Target | Verdict |\n"
            "|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in rows:
        ratio = "—" if r.cmp["ratio"] is None else f"{r.cmp['ratio']:.3f}"
        base = f"{r.base_label}: {_cell(r.base, r.stat, r.unit)}" if r.base else r.base_label
        subj = f"{r.subject_label}: {_cell(r.subject, r.stat, r.unit)}"
        verdict = {"met": "**met**", "missed": "**MISSED**"}.get(r.verdict, r.verdict)
        lines.append(f"| {r.section} | {r.figure} ({r.unit}) | {base} | {subj} | {ratio} | "
                     f"{_diff_cell(r)} | {r.target.text if r.target else '—'} | {verdict} |")
    return head + "\n".join(lines) + "\n"


def _first_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        lines = (out.stdout + out.stderr).strip().splitlines()
        return next((ln for ln in lines if "version" in ln.lower()), lines[0] if lines else "")
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_info(llama_server: str) -> dict[str, Any]:
    """nproc, CPU model, RAM, kernel, Python and llama-server versions, load average."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": cpu,
        "ram_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "llama_server": llama_server,
        "llama_server_version": _first_line([llama_server, "--version"]),
        "loadavg_start": list(os.getloadavg()),
    }


def write_results(out_dir: Path, data: dict[str, Any], rows: list[Row]) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    data = {**data, "rows": [r.to_json() for r in rows]}
    json_path = out_dir / "results.json"
    json_path.write_text(json.dumps(data, indent=1, default=str) + "\n")
    md_path = out_dir / "results.md"
    md_path.write_text(render_markdown(data, rows))
    return json_path, md_path


def render_markdown(data: dict[str, Any], rows: list[Row]) -> str:
    m = data["machine"]
    load = max(m["loadavg_start"][0], max((x[0] for x in data.get("loadavg_samples", [])),
                                          default=0.0))
    # During the run the load average counts the benchmark's own llama-servers and clients
    # (2 busy threads while generating), so only the load at start says whether others ran.
    shared = m["loadavg_start"][0] > 1.0
    lines = [
        f"# lemonade_jupyter benchmarks ({data['mode']} run)",
        "",
        f"Run {data['started']} with `{data['command']}`, {data['duration_s']:.0f} s.",
        "",
        f"Machine: {m['nproc']} CPUs ({m['cpu_model']}), {m['ram_gib']} GiB RAM, Linux "
        f"{m['kernel']}, Python {m['python']}, llama-server {m['llama_server_version']}.",
        f"Load average (1 min) at start {m['loadavg_start'][0]:.2f}, highest seen during the run "
        f"{load:.2f} (that one includes the benchmark's own processes).",
        "",
    ]
    if shared:
        lines += [
            "**Measured while the machine was shared** (load average above 1 at start): other "
            "work competed for the CPUs, so absolute figures are noisier and slower than on an "
            "idle machine. Baseline and subject were interleaved, so both saw the same load.",
            "",
        ]
    lines += [
        "Each row: the baseline and the subject measured interleaved in the same run. Spread is "
        "p5–p95 (min–max under 10 samples). Ratio = subject/baseline, Diff = subject − baseline "
        "of the row's statistic (the median unless the figure says p95), with a 90% bootstrap "
        "interval. Verdicts compare the point estimate with the row's target.",
        "",
        markdown_table(rows),
    ]
    for note in data.get("notes", []):
        lines.append(f"- {note}")
    if data.get("errors"):
        lines += ["", "## Errors", ""] + [f"- {e}" for e in data["errors"]]
    return "\n".join(lines) + "\n"


def now_iso() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z")
