"""``vramplan report`` through click: outputs, warnings on stderr, exit codes."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from click.testing import CliRunner
from report_synthetic import run_record

from vramplan.cli.main import cli
from vramplan.cli.report import report


def test_html_to_out_with_not_json_warning(records_dir, tmp_path):
    out = tmp_path / "site" / "index.html"
    r = CliRunner().invoke(report, [str(records_dir), "--out", str(out), "--title", "example"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    page = out.read_text()
    assert "<title>example</title>" in page and 'id="run-1-timeline"' in page
    assert "notjson.json: not JSON: Expecting property name" in page
    assert (f"vramplan: warning: {records_dir / 'notjson.json'}: not JSON: Expecting property name enclosed in "
            "double quotes at line 1 column 2; reported on the page") in r.stderr.splitlines()
    assert "Traceback" not in r.output
    assert r.stdout == ""
    assert "wrote" in r.stderr


def test_md_and_csv_to_stdout(records_dir):
    runner = CliRunner()
    md = runner.invoke(report, [str(records_dir / "ok.json"), "--format", "md"], catch_exceptions=False)
    assert md.exit_code == 0 and md.stdout.startswith("| run | model |")
    assert "measured peak allocated (GiB)" in md.stdout.splitlines()[0]
    csv_ = runner.invoke(report, [str(records_dir / "ok.json"), "--format", "csv"], catch_exceptions=False)
    assert csv_.exit_code == 0 and csv_.stdout.splitlines()[0].startswith("run,model,method,setup,GPU,status,")
    assert len(csv_.stdout.splitlines()) == 2


def test_csv_to_file(records_dir, tmp_path):
    out = tmp_path / "bench.csv"
    r = CliRunner().invoke(report, [str(records_dir / "ok.json"), str(records_dir / "oom.json"), "--format",
                                    "csv", "--out", str(out)], catch_exceptions=False)
    assert r.exit_code == 0 and r.stdout == ""
    assert len(out.read_text().splitlines()) == 3


def test_summary_json_lists_the_runs(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "a.json").write_text(json.dumps(run_record()))
    (runs / "b.json").write_text(json.dumps(run_record(status="oom")))
    (tmp_path / "summary.json").write_text(json.dumps({"runs": ["runs/b.json", "runs/a.json", "runs/gone.json"]}))
    r = CliRunner().invoke(report, [str(tmp_path / "summary.json"), "--format", "csv"], catch_exceptions=False)
    lines = r.stdout.splitlines()
    assert r.exit_code == 0 and len(lines) == 3
    assert lines[1].split(",")[0].endswith("runs/b.json") and lines[2].split(",")[0].endswith("runs/a.json")
    assert f"{tmp_path / 'runs' / 'gone.json'}: cannot read: No such file or directory" in r.stderr


def test_directory_with_summary_shows_each_run_once(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(run_record()))
    (tmp_path / "summary.json").write_text(json.dumps({"runs": ["a.json"], "n": 1}))
    r = CliRunner().invoke(report, [str(tmp_path), "--format", "csv"], catch_exceptions=False)
    assert r.exit_code == 0 and len(r.stdout.splitlines()) == 2


def test_empty_directory_is_one_line_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "vramplan", "report", str(tmp_path)], capture_output=True,
                          text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"vramplan: error: no *.json files in directory {str(tmp_path)!r}: pass run records "
        "(vramplan profile --out RUN.json) or a folder holding them"]


def test_missing_file_and_no_args_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "vramplan", "report", str(tmp_path / "nope.json")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "does not exist" in proc.stderr
    assert CliRunner().invoke(report, []).exit_code == 2


def test_registered_in_the_group():
    r = CliRunner().invoke(cli, ["--help"], catch_exceptions=False)
    assert re.search(r"\n  report +Render saved run records as an HTML report", r.output)
