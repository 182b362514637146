"""The benchmark script runs end to end (not a timing test: it checks what it reports, never how fast)."""

from __future__ import annotations

import json

from benchmarks import bench


def test_bench_reports_ratios_and_memory_for_the_example(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench.main(["--models", "example", "--machines", "isaac8", "--batch", "2", "--repeat", "2", "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["results"]
    assert (row["model"], row["machine"], row["batch"], row["mvm_path"]) == ("example", "isaac8", 2, "fast")
    assert row["crossbars"] > 0 and row["simulator_peak_mib"] > 0
    for k in ("onnxruntime_s", "simulator_s", "onnxruntime_best_s", "simulator_best_s"):
        assert row[k] > 0
    assert row["onnxruntime_best_s"] <= row["onnxruntime_s"] and row["simulator_best_s"] <= row["simulator_s"]
    assert row["ratio"] == row["simulator_s"] / row["onnxruntime_s"]
    assert row["best_ratio"] == row["simulator_best_s"] / row["onnxruntime_best_s"]
    assert row["simulator_images_per_s"] == 2 / row["simulator_s"]
    assert "best ratio" in capsys.readouterr().out

