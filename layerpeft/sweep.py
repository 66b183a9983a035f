"""End-of-sweep summary (a Hydra callback): which jobs failed, and the sweep's table."""

from __future__ import annotations

from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from layerpeft.report.tables import collect_runs, csv_text, markdown, table_rows


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        runs = collect_runs([sweep_dir])
        failed = [r for r in runs if r.metrics.get("status") == "failed"]
        if runs:
            header, rows = table_rows(runs)
            (sweep_dir / "report.md").write_text(markdown(header, rows) + "\n")
            (sweep_dir / "report.csv").write_text(csv_text(header, rows))
        print(f"sweep {sweep_dir}: {len(runs) - len(failed)} of {len(runs)} jobs succeeded")
        for r in failed:
            print(f"  FAILED {r.label}: {r.metrics.get('error')}")
