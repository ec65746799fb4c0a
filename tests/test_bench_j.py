"""Benchmark J's segment cost is judged per CPU-second of the store's processes (issue 19's
targets: 10 / 100 segments cost at most 15 % / 40 % of the apply rate): the arithmetic from the
CPU seconds of each round, and the meter that counts them (this process, PostgreSQL backends)."""

from __future__ import annotations

import time

import psycopg
import pytest
from benchmarks import run
from benchmarks.cpu_meter import cpu_seconds

from tests.support import POSTGRES_URL, require_server


def test_given_cpu_seconds_per_round_then_rates_and_costs_are_per_cpu_second() -> None:
    cpu = {}
    for r, (bench, seg10, seg100) in enumerate([(1.0, 1.1, 1.5), (1.0, 1.3, 2.5)]):
        cpu[("bench", "varied", r)] = bench
        cpu[("seg10", "varied", r)] = seg10
        cpu[("seg100", "varied", r)] = seg100
        for workspace in ("bench", "seg10", "seg100"):  # another workload: not counted here
            cpu[(workspace, "worst", r)] = 9.0
    found = run.j_costs(cpu, "varied", 2_000)
    assert found["0_segments_events_per_s"] == pytest.approx(2 * 2_000 / 2.0)
    assert found["100_segments_events_per_s"] == pytest.approx(2 * 2_000 / 4.0)
    # The cost is the share of the rate that segments take: 1 - rate with / rate without.
    assert found["cost_10_segments"] == pytest.approx(1 - 2.0 / 2.4)
    assert found["cost_100_segments"] == pytest.approx(0.5)
    assert found["cost_10_segments_rounds"] == [round(1 - 1 / 1.1, 3), round(1 - 1 / 1.3, 3)]
    assert found["cost_100_segments_rounds"] == [round(1 - 1 / 1.5, 3), 0.6]
    # Another workload's figures are named with its tail after the segments.
    worst = run.j_costs(cpu, "worst", 2_000, "_worst")
    assert set(worst) >= {"0_segments_worst_events_per_s", "cost_10_segments_worst_rounds"}


def test_given_j_figures_then_the_summary_judges_each_target_per_cpu_second() -> None:
    cpu = {}
    for kind in ("varied", "worst"):
        for r in range(3):
            cpu.update({("bench", kind, r): 1.0, ("seg10", kind, r): 1.1, ("seg100", kind, r): 2.0})
    j: dict[str, object] = {"contacts": 20_000}
    for kind, tail in (("varied", ""), ("worst", "_worst")):
        j.update({f"sqlite_apply_{k}": v for k, v in run.j_costs(cpu, kind, 2_000, tail).items()})
    rows = [row for row in run.targets({"J": j}) if "segments" in row[0]]
    judged = {title: met for title, _, met in rows if met is not None}
    # 10 segments took 9 % of the CPU rate (<= 15 %: met), 100 took 50 % (> 40 %: missed).
    assert judged == {
        "J (sqlite) 10 segments cost <= 15% of the apply rate": True,
        "J (sqlite) 100 segments cost <= 40% of the apply rate": False,
    }
    assert any("events/CPU-s" in measured for _, measured, _ in rows)


def test_given_work_in_this_process_then_the_meter_counts_it_and_not_sleep() -> None:
    with run._JMeter() as meter:
        end = cpu_seconds() + 0.2
        while cpu_seconds() < end:
            pass
        time.sleep(0.2)
    assert 0.19 <= meter.seconds < 0.35


def test_given_a_backend_working_then_the_meter_counts_its_cpu() -> None:
    require_server(POSTGRES_URL, 5432)
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        pid = conn.info.backend_pid
        before = cpu_seconds(pid)
        with run._JMeter(lambda: [pid]) as meter:
            own = cpu_seconds()
            conn.execute("SELECT count(*) FROM generate_series(1, 3000000)")
            own = cpu_seconds() - own
        assert cpu_seconds(pid) - before >= 0.1
        # The backend did the work: the meter counts far more than this process spent.
        assert meter.seconds - own >= 0.1
