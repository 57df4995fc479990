"""`normgen bench --memory`: a run reports its memory, time and pool counters; bad requests exit 2."""

from __future__ import annotations

from normgen import cli
from normgen.bench import memory


def test_a_run_in_a_fresh_process_reports_memory_and_pool_counters():
    row = memory._child(["run", "layer_norm", "infer", "normgen", "--calls", "6"])
    assert (row["spec"], row["loop"], row["provider"], row["calls"]) == ("layer_norm", "infer", "normgen", 6)
    assert 0 < row["ready_mib"] <= row["peak_mib"]
    assert row["peak_is_lifetime"] or row["peak_mib"] >= row["held_mib"]
    assert row["pool"]["reused"] + row["pool"]["missed"] == 6  # every output (>= 4 MB) goes through the pool
    assert row["ms_per_call"] > 0 and row["faults_per_call"] >= 0


def test_the_table_puts_normgen_against_torch():
    base = {"ready_mib": 50.0, "ms_per_call": 1.0, "faults_per_call": 0.0, "spec": "layer_norm", "loop": "infer"}
    rows = [dict(base, provider="normgen", peak_mib=300.0, held_mib=200.0, pool={"reused": 9, "missed": 1}),
            dict(base, provider="torch", peak_mib=400.0, held_mib=400.0)]
    lines = memory.table(rows).splitlines()
    assert "0.75   0.50" in lines[2] and "reused 9, missed 1" in lines[2]
    assert "1.00   1.00" in lines[3]


def test_memory_bench_of_a_spec_it_does_not_cover_exits_2(capsys):
    assert cli.main(["bench", "--memory", "--spec", "rms_norm"]) == 2
    assert "bench --memory measures CPU processes of layer_norm, group_norm, batch_norm" in capsys.readouterr().err
